//! Access between portals: a portal's valid token writes only that portal's
//! events, and cannot make another portal's name (its domain) point at them.
//! (Wrong member/token pairs are covered in rejections.rs.)

mod common;

use common::*;

/// P1 sends a correctly authenticated event that claims P2's domain in
/// `auth[domain]`. Whatever happens to it, P2's domain must keep naming P2:
/// a dashboard reading `/v1/portals/<P2's domain>/events` must see P2's
/// events only, never P1's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_portal_cannot_take_over_another_portals_domain() {
    let dir = tempdir();
    let s = spawn_app(dir.path(), &[]).await;
    let (p2_id, _) = s
        .store(&EventSpec::new(
            P2,
            "ONCRMDEALADD",
            Some("1"),
            1_700_000_000,
        ))
        .await;
    s.store(&EventSpec::new(
        P1,
        "ONCRMDEALADD",
        Some("1"),
        1_700_000_000,
    ))
    .await;

    // P1's member id and token, P2's domain and endpoint.
    let mut spoof = EventSpec::new(P1, "ONCRMDEALUPDATE", Some("666"), 1_700_000_001);
    spoof.portal = Portal {
        domain: P2.domain,
        ..P1
    };
    let r = s.post_form(&spoof.form()).await;
    eprintln!("spoofed domain: {} {}", r.status, r.text);
    r.assert_error(
        409,
        "auth[domain]",
        "event claiming another portal's domain",
    );

    // P2's domain still names P2, by the events and by the portal list.
    let by_domain = s.all_events(P2.domain).await;
    assert!(
        by_domain.iter().all(|e| e["member_id"] == P2.member),
        "GET /v1/portals/{}/events now shows another portal's events: {:?}",
        P2.domain,
        by_domain
            .iter()
            .map(|e| (e["member_id"].clone(), e["entity_id"].clone()))
            .collect::<Vec<_>>()
    );
    assert_eq!(ids(&by_domain), vec![p2_id]);
    let p2 = s.portal_entry(P2.member).await.unwrap();
    assert_eq!(p2["domain"], P2.domain);
    assert_eq!(p2["events"], 1);
    // Nothing was written to P2.
    assert_eq!(s.count(P2.member).await, 1);
    s.stop().await;
}
