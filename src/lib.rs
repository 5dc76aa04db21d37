//! b24-journal: receive, verify, deduplicate and durably journal Bitrix24
//! events, and serve them to dashboards.
//!
//! The modules follow the data path:
//! [`receive`] (HTTP in) → [`decode`] → [`verify`] → [`journal`] (store) →
//! [`query`] (HTTP out). [`server`] wires them together, [`settings`] reads the
//! configuration, [`types`] holds the typed values parsed at the edge, and
//! [`http`] the error type and JSON plumbing shared by the routes.

#![warn(missing_docs)]

pub mod admin;
pub mod cli;
pub mod decode;
pub mod http;
pub mod journal;
pub mod metrics;
pub mod openapi;
pub mod query;
pub mod receive;
pub mod server;
pub mod settings;
pub mod types;
pub mod verify;

use std::io::IsTerminal;

pub use settings::{Cli, Settings};

/// Sets up logging to stderr, as text or JSON lines. The level comes from
/// `RUST_LOG` (default `info`). Nothing anywhere logs a request body or a
/// token.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // sled logs through the `log` crate. Forward its records at info and
    // above only: its debug/trace records are noise for operators, and some
    // are emitted from thread-local destructors at thread exit, where the
    // tracing dispatcher is already gone and forwarding them aborts the
    // process. A second call (tests) keeps the first logger and subscriber.
    let _ = tracing_log::LogTracer::builder()
        .with_max_level(tracing_log::log::LevelFilter::Info)
        .init();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}

/// Turns transparent huge pages off for this process (Linux; elsewhere a
/// no-op). mimalloc asks for them on its arenas (`madvise(MADV_HUGEPAGE)`),
/// and with the kernel's THP mode at `madvise` every touched 2 MiB region
/// may then be backed whole, so resident memory depends on the host's THP
/// settings and on khugepaged's timing. Measured on this VM: the bench's
/// fill of 300k events peaked at 171 MiB RSS with them and 115 MiB without,
/// at the same fill rate; the 10M fill peaked at 298 MiB with them. Call it
/// first thing in `main`, before the memory it should cover is touched.
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) only sets a flag on
        // this process's memory map; it takes no pointers.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// How long, in ms, mimalloc keeps freed memory before giving it back to
/// the kernel, as [`shorten_allocator_purge_delay`] sets it.
pub const ALLOCATOR_PURGE_DELAY_MS: i64 = 50;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (mimalloc.h):
/// libmimalloc-sys names no constant for it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Has mimalloc, the global allocator of both binaries in this repo, give
/// freed memory back to the kernel after [`ALLOCATOR_PURGE_DELAY_MS`]
/// instead of mimalloc v3's default of 1 s. sled copies a tree node on
/// most writes and frees the old copy, so a writer frees memory fast, and
/// with the default a second's worth of it stayed resident: during the
/// bench's 10M fill (the service's write path) RSS swung by 20–30 MiB
/// about once a second. Measured on this VM, fills of 1M events, peak RSS
/// and fill time:
///
/// | purge delay | peak RSS | fill time |
/// |---|---|---|
/// | 1000 ms (default) | 135–141 MiB | 40.7–51.5 s (6 runs) |
/// | 100 ms | 126 MiB | 49.2 s (1 run) |
/// | 50 ms | 120–122 MiB | 40.9–43.7 s (2 runs) |
/// | 10 ms | 115–133 MiB | 44.6–53.1 s (6 runs) |
/// | 0–1 ms | 113–114 MiB | 50.2–51.2 s (2 runs) |
///
/// 50 ms keeps most of the saving without the write-path cost of the
/// shorter delays. The query server on 10M events (10 ms, two runs each):
/// 9 MiB less under latest-50 and `entity_id` load, requests/s within the
/// run-to-run spread. `MIMALLOC_PURGE_DELAY` in the environment still
/// wins. Call first thing in `main`: mimalloc's option setter is not
/// thread-safe.
pub fn shorten_allocator_purge_delay() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: stores one integer in mimalloc's option table; called
        // before `main` starts any other thread, so nothing reads it
        // concurrently.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS as _)
        };
    }
}

/// Why the program failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad settings.
    #[error(transparent)]
    Settings(#[from] settings::SettingsError),
    /// The server could not run.
    #[error(transparent)]
    Run(#[from] server::RunError),
    /// A maintenance command failed.
    #[error(transparent)]
    Command(#[from] cli::CommandError),
}

/// Runs the command the CLI asked for, with logging set up for it.
pub async fn run(cli: Cli) -> Result<(), Error> {
    match cli.into_command() {
        settings::Command::Serve(args) => {
            let settings = Settings::resolve(*args)?;
            init_logging(settings.log_json);
            server::run(settings).await?;
        }
        settings::Command::Backup(args) => {
            init_logging(false);
            cli::backup(args).await?;
        }
        settings::Command::Verify(args) => {
            init_logging(false);
            tokio::task::spawn_blocking(move || cli::verify(&args.data_dir))
                .await
                .map_err(|e| cli::CommandError::Failed(e.to_string()))??;
        }
        settings::Command::Migrate(args) => {
            init_logging(false);
            tokio::task::spawn_blocking(move || cli::migrate(&args.data_dir))
                .await
                .map_err(|e| cli::CommandError::Failed(e.to_string()))??;
        }
        settings::Command::Portals(args) => {
            init_logging(false);
            tokio::task::spawn_blocking(move || cli::portals(args))
                .await
                .map_err(|e| cli::CommandError::Failed(e.to_string()))??;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::ffi::{c_char, c_void, CStr};

    extern "C" {
        // mimalloc.h; libmimalloc-sys does not bind it.
        fn mi_options_print_out(out: libmimalloc_sys::mi_output_fun, arg: *mut c_void);
    }

    /// Appends one line of mimalloc's output to the `String` behind `arg`.
    unsafe extern "C" fn collect(msg: *const c_char, arg: *mut c_void) {
        // SAFETY: `arg` is the `&mut String` passed below, alive for the
        // call; mimalloc passes a NUL-terminated message.
        let out = unsafe { &mut *(arg as *mut String) };
        out.push_str(&unsafe { CStr::from_ptr(msg) }.to_string_lossy());
    }

    /// The option number the setter uses is mimalloc's purge delay: read
    /// back by name from mimalloc's own listing of its options.
    #[test]
    fn the_purge_delay_lands_on_mimallocs_purge_delay_option() {
        super::shorten_allocator_purge_delay();
        let mut out = String::new();
        // SAFETY: `collect` matches mimalloc's output callback and `out`
        // outlives the call.
        unsafe { mi_options_print_out(Some(collect), &mut out as *mut String as *mut c_void) };
        let expected = std::env::var("MIMALLOC_PURGE_DELAY")
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(super::ALLOCATOR_PURGE_DELAY_MS);
        assert!(
            out.contains(&format!("option 'purge_delay': {expected} ")),
            "mimalloc's options:\n{out}"
        );
    }
}
