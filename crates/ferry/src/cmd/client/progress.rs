//! Progress bars on stderr: one per file, and an overall one when there are several files.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferry_client::Progress;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Bars {
    /// Hidden bars still cost a template parse and allocations per file: with 2,000 small
    /// files that was a tenth of `put -r -q`'s CPU. So hidden means doing nothing.
    visible: bool,
    /// A bar per file, which only makes sense while files go one at a time (one
    /// connection); with several, only the overall bar moves.
    per_file: bool,
    multi: MultiProgress,
    /// Parsed once; each file's bar gets a copy.
    file_style: ProgressStyle,
    overall: Option<ProgressBar>,
    current: Mutex<Option<ProgressBar>>,
    /// Files started so far. One started again is a retry (`-j`, after a connection failed):
    /// the part it resumes from was counted as it arrived the first time, so the overall bar
    /// does not count it again.
    started: Mutex<HashSet<String>>,
    files: AtomicUsize,
    done: AtomicUsize,
}

impl Bars {
    /// Bars for `files` files of `total` bytes in all; hidden when `visible` is false.
    /// `per_file`: see [`Bars::per_file`].
    pub fn new(visible: bool, per_file: bool, files: usize, total: u64) -> Self {
        let overall = files > 1 || !per_file;
        Self::drawn_to(
            Self::target(visible),
            visible,
            per_file,
            files,
            total,
            overall,
        )
    }

    /// Bars for a download whose files are found as it goes (a tree listed page by page):
    /// [`Self::grow`] adds them.
    pub fn growing(visible: bool, per_file: bool) -> Self {
        Self::drawn_to(Self::target(visible), visible, per_file, 0, 0, true)
    }

    /// Adds `files` files of `bytes` bytes in all to what the overall bar expects.
    pub fn grow(&self, files: usize, bytes: u64) {
        self.files.fetch_add(files, Ordering::Relaxed);
        if let Some(o) = &self.overall {
            o.inc_length(bytes);
        }
    }

    fn target(visible: bool) -> ProgressDrawTarget {
        if visible {
            ProgressDrawTarget::stderr_with_hz(10)
        } else {
            ProgressDrawTarget::hidden()
        }
    }

    fn drawn_to(
        target: ProgressDrawTarget,
        visible: bool,
        per_file: bool,
        files: usize,
        total: u64,
        overall: bool,
    ) -> Self {
        let multi = MultiProgress::with_draw_target(target);
        let overall = (visible && overall).then(|| {
            let bar = multi.add(ProgressBar::new(total));
            bar.set_style(
                ProgressStyle::with_template(
                    "total {bytes:>10}/{total_bytes:<10} {bar:30} {binary_bytes_per_sec:>12} ETA {eta} ({msg})",
                )
                .expect("valid template"),
            );
            bar.set_message(format!("0/{files} files"));
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Bars {
            visible,
            per_file,
            multi,
            file_style: ProgressStyle::with_template(
                "{msg:30!} {bytes:>10}/{total_bytes:<10} {bar:30} {binary_bytes_per_sec:>12} ETA {eta}",
            )
            .expect("valid template"),
            overall,
            current: Mutex::new(None),
            started: Mutex::new(HashSet::new()),
            files: AtomicUsize::new(files),
            done: AtomicUsize::new(0),
        }
    }

    pub fn finish(&self) {
        if let Some(o) = &self.overall {
            o.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}

impl Progress for Bars {
    fn start_file(&self, name: &str, total: u64, already: u64) {
        if !self.visible {
            return;
        }
        let retried = !self
            .started
            .lock()
            .expect("progress lock")
            .insert(name.to_owned());
        let already_counted = if retried { already } else { 0 };
        if !self.per_file {
            if let Some(o) = &self.overall {
                o.inc(already - already_counted);
            }
            return;
        }
        let bar = self.multi.add(ProgressBar::new(total));
        bar.set_style(self.file_style.clone());
        bar.set_message(name.to_owned());
        bar.set_position(already);
        if let Some(o) = &self.overall {
            o.inc(already - already_counted);
        }
        if let Some(old) = self.current.lock().expect("progress lock").replace(bar) {
            old.finish_and_clear();
        }
    }

    fn advance(&self, n: u64) {
        if !self.visible {
            return;
        }
        if let Some(bar) = self.current.lock().expect("progress lock").as_ref() {
            bar.inc(n);
        }
        if let Some(o) = &self.overall {
            o.inc(n);
        }
    }

    fn finish_file(&self, _name: &str, _ok: bool) {
        if !self.visible {
            return;
        }
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(o) = &self.overall {
            let files = self.files.load(Ordering::Relaxed);
            o.set_message(format!("{done}/{files} files"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overall(bars: &Bars) -> u64 {
        bars.overall.as_ref().expect("an overall bar").position()
    }

    /// A file retried after its connection failed resumes from what arrived, which the overall
    /// bar counted as it arrived: it ends at the total, not past it.
    #[test]
    fn a_retried_file_is_counted_once() {
        for per_file in [false, true] {
            let bars = Bars::drawn_to(ProgressDrawTarget::hidden(), true, per_file, 2, 300, true);
            bars.start_file("a", 100, 0);
            bars.advance(60);
            bars.start_file("b", 200, 50); // resumed from an earlier command: not yet counted
            bars.advance(150);
            bars.finish_file("b", true);
            assert_eq!(overall(&bars), 260);
            bars.start_file("a", 100, 60); // the retry, resuming what arrived
            bars.advance(40);
            bars.finish_file("a", true);
            assert_eq!(overall(&bars), 300, "per_file {per_file}");
        }
    }
}
