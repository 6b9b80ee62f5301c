//! Progress of long work, one kind for every loop (PPO, the pipeline's phases, the supervised
//! search and retraining): a bar on a terminal, plain lines otherwise, nothing in tests.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Where a loop reports its position: env steps for PPO, iterations or epochs elsewhere.
pub trait Progress {
    fn update(&mut self, step: u64, total: u64, message: &str);
    fn finish(&mut self, message: &str);
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn update(&mut self, _: u64, _: u64, _: &str) {}
    fn finish(&mut self, _: &str) {}
}

/// A progress bar (steps/s, ETA and the loop's message), or [`Lines`] when `quiet` or when
/// stderr is not a terminal (a log file, a batch job), where a bar would draw nothing.
pub fn terminal(quiet: bool) -> Box<dyn Progress> {
    if quiet || !std::io::stderr().is_terminal() {
        return Box::new(Lines::default());
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {human_pos}/{human_len} {msg}",
        )
        .expect("valid template"),
    );
    Box::new(Bar(bar))
}

struct Bar(ProgressBar);

impl Progress for Bar {
    fn update(&mut self, step: u64, total: u64, message: &str) {
        self.0.set_length(total);
        self.0.set_position(step);
        self.0.set_message(message.to_string());
    }
    fn finish(&mut self, message: &str) {
        self.0.finish_with_message(message.to_string());
        // The next phase or epoch loop reuses the bar from zero.
        self.0.reset();
    }
}

/// Progress as plain lines on stdout: the first update, then at most one every
/// [`Lines::INTERVAL`], so a log stays readable.
#[derive(Default)]
pub struct Lines {
    last: Option<Instant>,
}

impl Lines {
    pub const INTERVAL: Duration = Duration::from_secs(10);
}

impl Progress for Lines {
    fn update(&mut self, step: u64, total: u64, message: &str) {
        if self.last.is_some_and(|t| t.elapsed() < Self::INTERVAL) {
            return;
        }
        self.last = Some(Instant::now());
        println!("step {step}/{total} | {message}");
    }
    fn finish(&mut self, message: &str) {
        println!("{message}");
        self.last = None;
    }
}
