//! Background engine work yields the CPU to requests.
//!
//! On a small machine the engine's flushes and compactions (fjall's worker
//! threads: LZ4 over megabytes at a time) and the profile trims compete
//! with the threads that answer requests. At equal priority a flush of a
//! memtable delayed tags by 100 ms and more at 10,000 tags/s; with these
//! threads at nice 10 the scheduler runs requests first, and background
//! work still gets every cycle they leave (it only loses when both want
//! the CPU). One run each of `allezon-replay --seed 42 --tags 450000
//! --rate 10000`: 21 tags timed out at equal priority, 1 at nice 10.

/// The niceness of background threads (0 is the default, 19 the lowest).
const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's priority to background work.
pub fn lower_this_thread() {
    // On Linux, niceness is per thread: `None` names the calling one.
    if let Err(err) = rustix::process::setpriority_process(None, BACKGROUND_NICE) {
        tracing::debug!(%err, "cannot lower a background thread's priority");
    }
}

/// Lowers the priority of this process's threads whose name starts with
/// `prefix` (threads that a library starts, which we cannot lower from
/// inside). Linux only; elsewhere nothing happens.
pub fn lower_threads_named(prefix: &str) {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for task in tasks.flatten() {
        let named = std::fs::read_to_string(task.path().join("comm"))
            .is_ok_and(|comm| comm.starts_with(prefix));
        let tid = task
            .file_name()
            .to_str()
            .and_then(|tid| tid.parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw);
        if let (true, Some(tid)) = (named, tid)
            && let Err(err) = rustix::process::setpriority_process(Some(tid), BACKGROUND_NICE)
        {
            tracing::debug!(%err, prefix, "cannot lower a background thread's priority");
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_threads_are_lowered() {
        let (tx, rx) = std::sync::mpsc::channel();
        let threads: Vec<_> = ["bgtest:worker", "fgtest"]
            .into_iter()
            .map(|name| {
                let tx = tx.clone();
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || {
                        let _ = tx.send((name, rustix::thread::gettid()));
                        std::thread::park();
                    })
                    .unwrap_or_else(|err| panic!("{err}"))
            })
            .collect();
        let tids: Vec<_> = rx.iter().take(2).collect();
        lower_threads_named("bgtest:");
        for (name, tid) in tids {
            let nice = rustix::process::getpriority_process(Some(tid))
                .unwrap_or_else(|err| panic!("{err}"));
            let expected = if name == "fgtest" { 0 } else { BACKGROUND_NICE };
            assert_eq!(nice, expected, "{name}");
        }
        for thread in threads {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
