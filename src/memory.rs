//! Process memory settings applied first thing in `main` (of the service
//! and of the bench): no transparent huge pages, and a short allocator purge
//! delay, so resident memory follows what the process uses.

/// How long, in ms, mimalloc keeps freed memory before giving it back to
/// the kernel, as [`shorten_allocator_purge_delay`] sets it.
pub const ALLOCATOR_PURGE_DELAY_MS: i64 = 50;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (mimalloc.h):
/// libmimalloc-sys names no constant for it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Turns transparent huge pages off for this process (Linux; elsewhere a
/// no-op). mimalloc asks for them on its arenas (`madvise(MADV_HUGEPAGE)`),
/// and with the kernel's THP mode at `madvise` every touched 2 MiB region
/// may then be backed whole, so resident memory would depend on the host's
/// THP settings and on khugepaged's timing. Call it first thing in `main`,
/// before the memory it should cover is touched.
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

/// Has mimalloc, the global allocator of both binaries in this repo, give
/// freed memory back to the kernel after [`ALLOCATOR_PURGE_DELAY_MS`]
/// instead of mimalloc v3's default of 1 s. sled copies a tree node on most
/// writes and frees the old copy, so a writer frees memory fast and the
/// default keeps a second's worth of it resident; a much shorter delay
/// costs write throughput. `MIMALLOC_PURGE_DELAY` in the environment still
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
