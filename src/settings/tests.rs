//! Tests of `settings`, kept apart so that the module reads as the code.

use super::*;

#[test]
fn flags_beat_file_and_defaults_apply() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:9999\"\ndata_dir = \"/tmp/x\"\n[portals]\nm1 = \"t1-0123456789abcdef\"\n",
    )
    .unwrap();
    let s = Settings::resolve(ServeArgs {
        config: Some(path.clone()),
        listen: Some("127.0.0.1:7000".into()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(s.listen.port(), 7000);
    assert_eq!(s.data_dir, PathBuf::from("/tmp/x"));
    assert_eq!(s.portals[0].0.as_str(), "m1");
    assert_eq!(s.cache_bytes, 8 * 1024 * 1024);
    assert_eq!(s.snapshot_every_bytes, 512 * 1024 * 1024);
    assert_eq!(s.body_timeout, Duration::from_secs(30));

    let s = Settings::resolve(ServeArgs {
        config: Some(path),
        portals: vec!["m2=t2-0123456789abcdef".into()],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(s.portals.len(), 1);
    assert_eq!(s.portals[0].0.as_str(), "m2");
}

#[test]
fn body_timeout_is_bounded() {
    for bad in [0, 3601] {
        let err = Settings::resolve(ServeArgs {
            body_timeout: Some(bad),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("body_timeout"), "{err}");
    }
}

#[test]
fn snapshot_every_mb_is_at_least_one() {
    let err = Settings::resolve(ServeArgs {
        snapshot_every_mb: Some(0),
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("snapshot_every_mb"), "{err}");
    let s = Settings::resolve(ServeArgs {
        snapshot_every_mb: Some(3),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(s.snapshot_every_bytes, 3 * 1024 * 1024);
}

#[test]
fn refuses_public_listen_without_read_token() {
    let err = Settings::resolve(ServeArgs {
        listen: Some("0.0.0.0:8080".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(err, SettingsError::ReadTokenRequired(_)));
}

/// Serve arguments with `listen` and these tokens.
fn with_tokens(listen: &str, read: &str, admin: &str, portal: &str) -> ServeArgs {
    ServeArgs {
        listen: Some(listen.into()),
        read_token: Some(read.into()),
        admin_token: Some(admin.into()),
        portals: vec![format!("a223c6b3710f85df22e9377d6c4f7553={portal}")],
        ..Default::default()
    }
}

#[test]
fn weak_tokens_are_refused_naming_the_setting() {
    const GOOD: &str = "4f1c9a7e2b8d6053a1e7";
    let cases = [
        (
            with_tokens(
                "127.0.0.1:8080",
                "CHANGE-ME-long-random-read-token",
                GOOD,
                GOOD,
            ),
            "read_token",
            "CHANGE-ME",
        ),
        (
            with_tokens(
                "127.0.0.1:8080",
                GOOD,
                "CHANGE-ME-another-long-random-admin-token",
                GOOD,
            ),
            "admin_token",
            "CHANGE-ME",
        ),
        (
            with_tokens("127.0.0.1:8080", "short-read-tok", GOOD, GOOD),
            "read_token",
            "shorter than 16",
        ),
        (
            with_tokens("127.0.0.1:8080", GOOD, "adm-7Hc2Qp9Lx4", GOOD),
            "admin_token",
            "shorter than 16",
        ),
        (
            with_tokens("127.0.0.1:8080", GOOD, GOOD, "abc123"),
            "portals",
            "shorter than 16",
        ),
        (
            with_tokens(
                "0.0.0.0:8080",
                GOOD,
                GOOD,
                "51856fefc120afa4b628cc82d3935cce",
            ),
            "portals",
            "sample application_token of Bitrix24's REST documentation",
        ),
        (
            with_tokens("10.0.0.5:8080", "local-read-token", GOOD, GOOD),
            "read_token",
            "README",
        ),
    ];
    for (args, setting, why) in cases {
        let err = Settings::resolve(args).unwrap_err().to_string();
        assert!(err.starts_with(&format!("invalid {setting}")), "{err}");
        assert!(err.contains(why), "{err}");
    }
}

#[test]
fn public_samples_pass_on_loopback_with_a_warning() {
    const GOOD: &str = "4f1c9a7e2b8d6053a1e7";
    let s = Settings::resolve(with_tokens(
        "127.0.0.1:8080",
        "local-read-token",
        GOOD,
        "51856fefc120afa4b628cc82d3935cce",
    ))
    .unwrap();
    assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
    assert!(s.warnings.iter().all(|w| w.contains("loopback")));
    assert!(!s.warnings.iter().any(|w| w.contains("51856fef")));
    let s = Settings::resolve(with_tokens("[::1]:8080", GOOD, GOOD, GOOD)).unwrap();
    assert!(s.warnings.is_empty());
}

#[test]
fn an_inherited_socket_beyond_loopback_refuses_loopback_only_tokens() {
    const GOOD: &str = "4f1c9a7e2b8d6053a1e7";
    let sample = Settings::resolve(with_tokens(
        "127.0.0.1:8080",
        GOOD,
        GOOD,
        "51856fefc120afa4b628cc82d3935cce",
    ))
    .unwrap();
    let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
    let err = check_exposure(public, &sample).unwrap_err().to_string();
    assert!(err.contains("not on loopback"), "{err}");
    assert!(!err.contains("51856fef"), "{err}");
    assert!(check_exposure("127.0.0.1:9".parse().unwrap(), &sample).is_ok());
    let own = Settings::resolve(with_tokens("127.0.0.1:8080", GOOD, GOOD, GOOD)).unwrap();
    assert!(check_exposure(public, &own).is_ok());
}

#[test]
fn trusted_proxies_and_backup_dir() {
    let s = Settings::resolve(ServeArgs {
        trusted_proxies: vec!["127.0.0.1".into(), "10.0.0.0/8".into(), "::1".into()],
        backup_dir: Some("/var/backups/b24-journal".into()),
        ..Default::default()
    })
    .unwrap();
    let nets: Vec<String> = s.trusted_proxies.iter().map(|n| n.to_string()).collect();
    assert_eq!(nets, ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]);
    assert_eq!(
        s.backup_dir,
        Some(PathBuf::from("/var/backups/b24-journal"))
    );
    let err = Settings::resolve(ServeArgs {
        trusted_proxies: vec!["10.0.0.0/33".into()],
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        err.to_string().starts_with("invalid trusted_proxies"),
        "{err}"
    );
    let err = Settings::resolve(ServeArgs {
        backup_dir: Some("backups".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().starts_with("invalid backup_dir"), "{err}");
}

#[test]
fn parse_errors_name_the_place_but_never_quote_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "queue = 1\nread_token = \"s3cr3t-unterminated\n").unwrap();
    let err = Settings::resolve(ServeArgs {
        config: Some(path),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("line 2, column"), "{err}");
    assert!(!err.contains("s3cr3t"), "{err}");
}

#[test]
fn log_level_is_checked() {
    let s = Settings::resolve(ServeArgs {
        log_level: Some("b24_journal=debug,warn".into()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(s.log_filter, "b24_journal=debug,warn");
    let err = Settings::resolve(ServeArgs {
        log_level: Some("b24_journal=loud".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("log_level"), "{err}");
}

#[test]
fn portal_errors_do_not_echo_tokens() {
    let err = parse_portal("bad id=secretvalue").unwrap_err();
    assert!(!err.to_string().contains("secretvalue"));
    assert!(parse_portal("novalue").is_err());
    assert!(parse_portal("m=").is_err());
}
