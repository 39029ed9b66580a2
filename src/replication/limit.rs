//! `--bwlimit`: a token bucket over stream payload bytes (zrepl counts payload, not protocol
//! overhead, too). A burst of up to `burst` bytes passes at once; beyond that the sender sleeps.

use std::time::Duration;

use tokio::time::Instant;

/// Limits a byte rate.
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_sec: f64,
    burst: f64,
    /// When the bucket is (virtually) full again.
    available_at: Instant,
}

impl RateLimit {
    /// At most `bytes_per_sec` on average, with bursts of `burst` bytes.
    pub fn new(bytes_per_sec: u64, burst: u64) -> Self {
        RateLimit { bytes_per_sec: bytes_per_sec.max(1) as f64, burst: burst as f64, available_at: Instant::now() }
    }

    /// How long to wait before sending `bytes` more, at time `now`; books them.
    pub fn delay(&mut self, bytes: u64, now: Instant) -> Duration {
        let burst = Duration::from_secs_f64(self.burst / self.bytes_per_sec);
        let start = self.available_at.max(now.checked_sub(burst).unwrap_or(now));
        self.available_at = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec);
        self.available_at.saturating_duration_since(now + burst)
    }

    /// Waits until `bytes` more may go.
    pub async fn acquire(&mut self, bytes: u64) {
        let wait = self.delay(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Parses `50M`, `1.5G`, `800k` or plain bytes per second (powers of 1024).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let text = text.trim().trim_end_matches("/s").trim_end_matches(['B', 'b']);
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len()));
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" | "ki" => 1 << 10,
        "m" | "mi" => 1 << 20,
        "g" | "gi" => 1 << 30,
        _ => return Err(format!("unknown unit {unit:?}: write e.g. 50M (MiB/s), 1G or 800k")),
    };
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a rate: write e.g. 50M, 1G or 800k"))?;
    if value.is_nan() || value <= 0.0 {
        return Err("a rate must be positive".into());
    }
    Ok((value * scale as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("50M"), Ok(50 << 20));
        assert_eq!(parse_rate("1.5G"), Ok(3 << 29));
        assert_eq!(parse_rate("800k"), Ok(800 << 10));
        assert_eq!(parse_rate("4096"), Ok(4096));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
    }

    #[test]
    fn the_bucket_paces_after_the_burst() {
        let mut limit = RateLimit::new(1 << 20, 1 << 20);
        let start = Instant::now();
        assert_eq!(limit.delay(1 << 20, start), Duration::ZERO, "the first burst passes");
        let wait = limit.delay(1 << 20, start);
        assert!((wait.as_secs_f64() - 1.0).abs() < 0.01, "{wait:?}");
        let later = start + Duration::from_secs(10);
        assert_eq!(limit.delay(1 << 19, later), Duration::ZERO, "idle time refills the bucket, up to the burst");
    }
}
