//! Progress bars on stderr: one per file, and an overall one when there are several files.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferry_client::Progress;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Bars {
    multi: MultiProgress,
    overall: Option<ProgressBar>,
    current: Mutex<Option<ProgressBar>>,
    files: usize,
    done: AtomicUsize,
    /// Hidden bars still cost a template parse and several allocations per file, which
    /// is a large share of a many-small-files transfer; so hidden means not made at all.
    visible: bool,
}

impl Bars {
    /// Bars for `files` files of `total` bytes in all; hidden when `visible` is false.
    pub fn new(visible: bool, files: usize, total: u64) -> Self {
        let target = if visible {
            ProgressDrawTarget::stderr_with_hz(10)
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let overall = (visible && files > 1).then(|| {
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
            multi,
            overall,
            current: Mutex::new(None),
            files,
            done: AtomicUsize::new(0),
            visible,
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
        let bar = self.multi.add(ProgressBar::new(total));
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:30!} {bytes:>10}/{total_bytes:<10} {bar:30} {binary_bytes_per_sec:>12} ETA {eta}",
            )
            .expect("valid template"),
        );
        bar.set_message(name.to_owned());
        bar.set_position(already);
        if let Some(o) = &self.overall {
            o.inc(already);
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
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(o) = &self.overall {
            o.set_message(format!("{done}/{} files", self.files));
        }
    }
}
