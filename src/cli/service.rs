//! Running under systemd (`Type=notify`, `WatchdogSec=`, `ExecReload=`): the sd_notify messages
//! over `$NOTIFY_SOCKET` (a unix datagram socket; `@name` is in the abstract namespace), the
//! readiness check, and the watchdog's health check. Without `$NOTIFY_SOCKET` every call here
//! does nothing.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Send one sd_notify message (`READY=1`, `WATCHDOG=1`, ...); errors are logged, not fatal.
pub fn notify(msg: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let target = target.to_string_lossy().into_owned();
    let sent = UnixDatagram::unbound().and_then(|s| {
        if let Some(name) = target.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            s.send_to_addr(msg.as_bytes(), &addr)
        } else {
            s.send_to(msg.as_bytes(), &target)
        }
    });
    if let Err(e) = sent {
        tracing::warn!(socket = %target, error = %e, message = msg, "cannot notify systemd");
    }
}

/// Whether `mountpoint` answers as a FUSE filesystem within `limit` (statfs goes to the daemon).
pub fn answers(mountpoint: &Path, limit: Duration) -> bool {
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    let path = mountpoint.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    // A thread of its own: a hung FUSE loop would hang the caller too.
    let spawned = std::thread::Builder::new().name("tezipfs-probe".into()).spawn(move || {
        let ok = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).is_ok_and(|c| {
            // SAFETY: a valid C string and a zeroed statfs struct for the kernel to fill.
            let mut st: libc::statfs = unsafe { std::mem::zeroed() };
            unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == FUSE_SUPER_MAGIC }
        });
        let _ = tx.send(ok);
    });
    spawned.is_ok() && rx.recv_timeout(limit).unwrap_or(false)
}

/// The watchdog, when systemd asked for one (`$WATCHDOG_USEC`, for this process): every third of
/// the interval, `WATCHDOG=1` if the mount answers and the engine's loop ran recently
/// (`engine_alive`), otherwise a logged warning and no ping (systemd then restarts the service).
pub fn start_watchdog(mountpoint: PathBuf, engine_alive: Arc<dyn Fn(Duration) -> bool + Send + Sync>, stop: Arc<AtomicBool>) {
    let Some(usec) = std::env::var("WATCHDOG_USEC").ok().and_then(|v| v.parse::<u64>().ok()) else { return };
    if std::env::var("WATCHDOG_PID").ok().and_then(|p| p.parse::<u32>().ok()).is_some_and(|p| p != std::process::id()) {
        return;
    }
    let interval = Duration::from_micros(usec);
    let spawned = std::thread::Builder::new().name("tezipfs-watchdog".into()).spawn(move || {
        let mut last = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
            if last.elapsed() < interval / 3 {
                continue;
            }
            last = Instant::now();
            let fuse = answers(&mountpoint, interval / 3);
            let engine = engine_alive(interval);
            if fuse && engine {
                notify("WATCHDOG=1");
            } else {
                tracing::warn!(fuse_answers = fuse, engine_alive = engine, "unhealthy: no watchdog ping to systemd");
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the watchdog thread");
    }
}
