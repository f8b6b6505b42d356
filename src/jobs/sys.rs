//! Raw system calls for a job's supervisor and for its command before the exec.
//!
//! Why not libc's wrappers: the job spawner starts supervisors with `clone(CLONE_VM)`, so
//! a supervisor shares the spawner's memory, thread-local storage included, and libc's
//! wrappers report failures through `errno`, which lives there: a supervisor's failed
//! `wait4` would overwrite the errno the spawner is about to read, and the other way
//! round. These return the kernel's answer as it is: a value, or `-errno`.
//!
//! Signal sets are the kernel's: one bit per signal in a `u64` (`sig(n)`).

use std::ffi::CStr;

use nix::libc::{self, c_char, c_int, c_long, pid_t};

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn call(n: c_long, a: [usize; 6]) -> isize {
    let ret: isize;
    std::arch::asm!(
        "syscall",
        inlateout("rax") n as isize => ret,
        in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
        in("r10") a[3], in("r8") a[4], in("r9") a[5],
        lateout("rcx") _, lateout("r11") _,
        options(nostack),
    );
    ret
}

#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn call(n: c_long, a: [usize; 6]) -> isize {
    let ret: isize;
    std::arch::asm!(
        "svc 0",
        in("x8") n,
        inlateout("x0") a[0] as isize => ret,
        in("x1") a[1], in("x2") a[2], in("x3") a[3], in("x4") a[4], in("x5") a[5],
        options(nostack),
    );
    ret
}

/// Elsewhere libc's `syscall`, which reports through errno: there the spawner gives each
/// supervisor memory of its own ([`SHARED_MEMORY_SAFE`]).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
unsafe fn call(n: c_long, a: [usize; 6]) -> isize {
    let r = libc::syscall(n, a[0], a[1], a[2], a[3], a[4], a[5]);
    if r == -1 {
        -(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO) as isize)
    } else {
        r as isize
    }
}

/// Whether a supervisor may share the spawner's memory: these calls leave errno alone.
pub const SHARED_MEMORY_SAFE: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

macro_rules! sys {
    ($n:expr) => { call($n, [0; 6]) };
    ($n:expr, $($a:expr),+) => {{
        let mut args = [0usize; 6];
        let given = [$($a as usize),+];
        args[..given.len()].copy_from_slice(&given);
        call($n, args)
    }};
}

/// The bit of signal `n` in a kernel signal set.
pub const fn sig(n: c_int) -> u64 {
    1u64 << (n - 1)
}

pub unsafe fn open(path: &CStr, flags: c_int) -> isize {
    openat(libc::AT_FDCWD, path.as_ptr(), flags)
}

pub unsafe fn openat(dir: c_int, path: *const c_char, flags: c_int) -> isize {
    sys!(libc::SYS_openat, dir, path, flags, 0)
}

pub unsafe fn read(fd: c_int, buf: &mut [u8]) -> isize {
    sys!(libc::SYS_read, fd, buf.as_mut_ptr(), buf.len())
}

pub unsafe fn write(fd: c_int, buf: &[u8]) -> isize {
    sys!(libc::SYS_write, fd, buf.as_ptr(), buf.len())
}

pub unsafe fn close(fd: c_int) -> isize {
    sys!(libc::SYS_close, fd)
}

/// Close every descriptor; false where the kernel has no `close_range`.
pub unsafe fn close_all() -> bool {
    sys!(libc::SYS_close_range, 0u32, u32::MAX, 0u32) == 0
}

pub unsafe fn dup_onto(fd: c_int, target: c_int) -> isize {
    sys!(libc::SYS_dup3, fd, target, 0)
}

pub unsafe fn mkdir(path: &CStr, mode: libc::mode_t) -> isize {
    sys!(libc::SYS_mkdirat, libc::AT_FDCWD, path.as_ptr(), mode)
}

pub unsafe fn rmdir(path: &CStr) -> isize {
    sys!(
        libc::SYS_unlinkat,
        libc::AT_FDCWD,
        path.as_ptr(),
        libc::AT_REMOVEDIR
    )
}

pub unsafe fn chdir(path: &CStr) -> isize {
    sys!(libc::SYS_chdir, path.as_ptr())
}

pub unsafe fn getdents64(fd: c_int, buf: &mut [u8]) -> isize {
    sys!(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len())
}

pub unsafe fn kill(pid: pid_t, signal: c_int) -> isize {
    sys!(libc::SYS_kill, pid, signal)
}

pub unsafe fn getpid() -> pid_t {
    sys!(libc::SYS_getpid) as pid_t
}

pub unsafe fn getppid() -> pid_t {
    sys!(libc::SYS_getppid) as pid_t
}

pub unsafe fn setpgid_self() -> isize {
    sys!(libc::SYS_setpgid, 0, 0)
}

pub unsafe fn prctl(option: c_int, arg: libc::c_ulong) -> isize {
    sys!(libc::SYS_prctl, option, arg)
}

/// `waitpid(-1, status, WNOHANG)`.
pub unsafe fn reap_any(status: &mut c_int) -> isize {
    sys!(
        libc::SYS_wait4,
        -1isize,
        status as *mut c_int,
        libc::WNOHANG,
        0
    )
}

pub unsafe fn set_signal_mask(set: u64) -> isize {
    sys!(
        libc::SYS_rt_sigprocmask,
        libc::SIG_SETMASK,
        &set as *const u64,
        0,
        8
    )
}

/// Wait up to `ms` for one of the (blocked) signals of `set`: its number, or `-errno`.
pub unsafe fn wait_signal(set: u64, ms: i64) -> isize {
    let ts = libc::timespec {
        tv_sec: ms / 1000,
        tv_nsec: (ms % 1000) * 1_000_000,
    };
    sys!(
        libc::SYS_rt_sigtimedwait,
        &set as *const u64,
        0,
        &ts as *const libc::timespec,
        8
    )
}

/// The default action for `signal` (the kernel's `struct sigaction`: handler, flags,
/// restorer, mask; SIG_DFL needs no restorer).
pub unsafe fn default_action(signal: c_int) -> isize {
    let action: [usize; 4] = [libc::SIG_DFL, 0, 0, 0];
    sys!(libc::SYS_rt_sigaction, signal, action.as_ptr(), 0, 8)
}

pub unsafe fn no_core_dumps() -> isize {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    sys!(
        libc::SYS_prlimit64,
        0,
        libc::RLIMIT_CORE,
        &zero as *const libc::rlimit,
        0
    )
}

pub fn monotonic_ms() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe {
        sys!(
            libc::SYS_clock_gettime,
            libc::CLOCK_MONOTONIC,
            &mut ts as *mut libc::timespec
        )
    };
    ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}

pub unsafe fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> isize {
    sys!(libc::SYS_execve, path, argv, envp)
}

pub unsafe fn exit(code: c_int) -> ! {
    loop {
        sys!(libc::SYS_exit_group, code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_return_values_and_negative_errnos() {
        unsafe {
            assert_eq!(getpid() as u32, std::process::id());
            assert_eq!(close(-1), -(libc::EBADF as isize));
            assert_eq!(
                open(c"/nonexistent/hark", libc::O_RDONLY),
                -(libc::ENOENT as isize)
            );
            let fd = open(c"/proc/self/stat", libc::O_RDONLY | libc::O_CLOEXEC);
            assert!(fd >= 0, "{fd}");
            let mut buf = [0u8; 64];
            assert!(read(fd as c_int, &mut buf) > 0);
            assert_eq!(close(fd as c_int), 0);
            // A zero timeout with nothing pending: EAGAIN, not a signal.
            assert_eq!(wait_signal(sig(libc::SIGUSR2), 0), -(libc::EAGAIN as isize));
        }
        assert!(monotonic_ms() > 0);
    }
}
