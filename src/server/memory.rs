//! Memory at rest: giving back the code pages an idle natterd does not need.
//!
//! The heap side (buffers of idle connections, then `mi_collect`) is the loop's and the
//! binary's; this is the other half of an idle server's resident memory: code and
//! constants of natterd and its shared libraries, mapped in by start-up and by earlier
//! clients. See docs/architecture.md, "Memory at rest".

/// Gives back the pages of code and constants that start-up (argument parsing,
/// loading credentials and the certificate, journal replay, the dynamic loader's work)
/// or earlier clients used: the kernel maps them in, in 64 KiB runs around each first
/// use, natterd's own and the shared libraries' alike, and keeps them in this
/// process's page tables for good. What the loop runs afterwards is mapped back in as
/// it is used, from the page cache (a minor fault, no disk read).
pub fn unmap_clean_code() {
    use nix::sys::mman::{MmapAdvise, madvise};
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    for (lo, hi) in clean_file_mappings(&smaps) {
        let Some(addr) = std::ptr::NonNull::new(lo as *mut std::ffi::c_void) else {
            continue;
        };
        // SAFETY: the range is one whole mapping of this process, read from
        // /proc/self/smaps: page-aligned and mapped. It is a private, read-only
        // mapping of a file with no anonymous (copied-on-write) page: every page in
        // it is the file's own page from the page cache. MADV_DONTNEED only removes
        // them from this process's page tables; the next access maps the same bytes
        // in again from the file. The mapping cannot gain a written page meanwhile (it
        // is not writable), so no memory this process wrote is lost and no reference
        // into it becomes invalid. Relocated read-only data (RELRO) has anonymous
        // pages and is left alone. Nothing can put other memory at this address in
        // between: natterd never unmaps a file mapping (no `dlclose`, no `mmap` of its
        // own), and the executable's file cannot be rewritten while it runs.
        let _ = unsafe { madvise(addr, hi - lo, MmapAdvise::MADV_DONTNEED) };
    }
}

/// The address ranges in `smaps` (the text of `/proc/self/smaps`) that map a file
/// privately, are not writable and hold no anonymous page.
fn clean_file_mappings(smaps: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let (Some(first), Some(second)) = (f.next(), f.next()) else {
            continue;
        };
        if let Some((lo, hi)) = first.split_once('-')
            && let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        {
            // A mapping's header: range, perms, offset, device, inode, path.
            let inode = f.nth(2);
            let file = f.next().is_some_and(|p| p.starts_with('/'));
            let private_ro = second.len() == 4 && !second.contains('w') && second.ends_with('p');
            current = (file && private_ro && inode != Some("0")).then_some((lo, hi));
        } else if first == "Anonymous:"
            && let Some(range) = current.take()
            && second == "0"
        {
            out.push(range);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::clean_file_mappings;

    const SMAPS: &str = "\
5600a000-5600b000 r--p 00000000 08:01 1234 /usr/bin/natterd
Size:                  4 kB
Rss:                   4 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
5600b000-5600f000 r-xp 00001000 08:01 1234 /usr/bin/natterd
Rss:                  16 kB
Anonymous:             0 kB
5600f000-56010000 r--p 00005000 08:01 1234 /usr/bin/natterd
Anonymous:             4 kB
56010000-56011000 rw-p 00006000 08:01 1234 /usr/bin/natterd
Anonymous:             4 kB
56011000-56012000 rw-p 00000000 00:00 0 [heap]
Anonymous:             4 kB
7f00000000-7f00010000 r-xp 00000000 08:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
7f00010000-7f00011000 r-xs 00000000 08:01 77 /dev/shm/shared map
Anonymous:             0 kB
7f00020000-7f00021000 r--p 00000000 00:00 0 
Anonymous:             0 kB
7ffd0000-7ffd2000 r-xp 00000000 00:00 0 [vdso]
Anonymous:             0 kB
";

    /// Only private, read-only file mappings without a copied page: the executable's
    /// code and constants and libc's code; not relocated data (RELRO), writable data,
    /// the heap, shared mappings, anonymous memory or the vDSO.
    #[test]
    fn only_clean_read_only_file_mappings_are_chosen() {
        assert_eq!(
            clean_file_mappings(SMAPS),
            [
                (0x5600a000, 0x5600b000),
                (0x5600b000, 0x5600f000),
                (0x7f00000000, 0x7f00010000),
            ]
        );
    }

    /// The process's own smaps parses, and its own code is among what is chosen.
    #[test]
    fn this_process_has_clean_code_mappings() {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let here = only_clean_read_only_file_mappings_are_chosen as fn() as usize;
        let chosen = clean_file_mappings(&smaps);
        assert!(chosen.iter().any(|&(lo, hi)| (lo..hi).contains(&here)));
    }
}
