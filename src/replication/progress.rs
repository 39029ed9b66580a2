//! Progress of a transfer: bytes, estimate, rate and ETA. On a terminal it redraws one line on
//! stderr; otherwise (logs, CI) it prints a plain line every `interval`.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Shared counters of a transfer; clone-cheap.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    inner: Arc<Counters>,
}

#[derive(Debug)]
struct Counters {
    done: AtomicU64,
    expected: AtomicU64,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters { done: AtomicU64::new(0), expected: AtomicU64::new(0), stop: tokio::sync::watch::Sender::new(false) }
    }
}

/// `1.5 GiB`-style sizes.
pub fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{value:.0} {}", UNITS[unit]) } else { format!("{value:.1} {}", UNITS[unit]) }
}

fn human_duration(secs: f64) -> String {
    let secs = secs.max(0.0).round() as u64;
    if secs >= 3600 {
        format!("{}h{:02}m", secs / 3600, secs / 60 % 60)
    } else {
        format!("{}m{:02}s", secs / 60, secs % 60)
    }
}

impl Progress {
    /// Bytes moved so far.
    pub fn done(&self) -> u64 {
        self.inner.done.load(Ordering::Relaxed)
    }

    /// Counts `n` more bytes.
    pub fn add(&self, n: u64) {
        self.inner.done.fetch_add(n, Ordering::Relaxed);
    }

    /// Takes back `n` bytes counted by a transfer that failed (its retry counts them again).
    pub fn take_back(&self, n: u64) {
        self.inner.done.fetch_sub(n.min(self.done()), Ordering::Relaxed);
    }

    /// Adds to the expected total (0 = unknown, no ETA).
    pub fn expect(&self, n: u64) {
        self.inner.expected.fetch_add(n, Ordering::Relaxed);
    }

    /// One status line: `1.2 GiB / 4.0 GiB (30%), 812.3 MiB/s, ETA 0m04s`.
    pub fn line(&self, elapsed: Duration) -> String {
        let done = self.done() as f64;
        let expected = self.inner.expected.load(Ordering::Relaxed) as f64;
        let rate = done / elapsed.as_secs_f64().max(1e-3);
        let mut line = human_bytes(done);
        if expected > 0.0 {
            let eta = if rate > 0.0 { human_duration((expected - done) / rate) } else { "?".into() };
            let pct = (done / expected * 100.0).min(100.0);
            line = format!("{line} / {} ({pct:.0}%), {}/s, ETA {eta}", human_bytes(expected), human_bytes(rate));
        } else {
            line = format!("{line}, {}/s", human_bytes(rate));
        }
        line
    }

    /// Reports on stderr until [`Progress::finish`]; a bar on a terminal, else a line per `interval`.
    pub fn report(&self, label: String, interval: Duration) -> tokio::task::JoinHandle<()> {
        let progress = self.clone();
        let tty = std::io::stderr().is_terminal();
        let tick = if tty { Duration::from_millis(250) } else { interval };
        let mut stop = self.inner.stop.subscribe();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
            while !*stop.borrow_and_update() {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop.changed() => break,
                }
                let line = progress.line(start.elapsed());
                let mut err = std::io::stderr().lock();
                let _ = if tty { write!(err, "\r\x1b[2K{label}: {line}") } else { writeln!(err, "{label}: {line}") };
                let _ = err.flush();
            }
            if tty {
                let _ = writeln!(std::io::stderr());
            }
        })
    }

    /// Stops the reporter at once.
    pub fn finish(&self) {
        self.inner.stop.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finish_stops_the_reporter_at_once() {
        let progress = Progress::default();
        let reporter = progress.report("test".into(), Duration::from_secs(3600));
        tokio::time::sleep(Duration::from_millis(10)).await;
        progress.finish();
        tokio::time::timeout(Duration::from_secs(5), reporter).await.expect("stopped").expect("joined");
    }

    #[test]
    fn lines_show_rate_and_eta() {
        let progress = Progress::default();
        progress.expect(4 << 30);
        progress.add(1 << 30);
        let line = progress.line(Duration::from_secs(1));
        assert_eq!(line, "1.0 GiB / 4.0 GiB (25%), 1.0 GiB/s, ETA 0m03s");
        let unknown = Progress::default();
        unknown.add(512);
        assert_eq!(unknown.line(Duration::from_secs(2)), "512 B, 256 B/s");
    }
}
