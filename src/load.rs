//! `carepath bench-load`: an open-loop load generator for the task-queue API. Requests start on a
//! fixed schedule (`rate` per second) whether or not earlier ones have finished, and each
//! latency is measured from the instant its request was due, not from when it was sent, so a
//! server that stalls is charged for every request that should have started meanwhile (no
//! coordinated omission). The mix of pulls is `bench/queue-pull.lua`'s.

use std::time::{Duration, Instant};

use anyhow::Context;

/// A pull staff make, with the token of the member of staff making it.
struct Pull {
    path: String,
    token: String,
}

/// SplitMix64, seeded: the same mix on every run.
struct Mix(u64);

impl Mix {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n.max(1)
    }
}

/// 4,096 pulls over `tokens` (`institution:role:token`, as `carepath bench-api` prints them):
/// a quarter the open queue, a quarter by role, a tenth by status, 15 % a due window and a
/// quarter a later page at a random depth.
fn pulls(tokens: &str, now: i64) -> anyhow::Result<Vec<Pull>> {
    let who: Vec<(String, String)> = tokens
        .split(',')
        .filter_map(|e| {
            let mut p = e.splitn(3, ':');
            let (_, role, token) = (p.next()?, p.next()?, p.next()?);
            Some((role.to_string(), token.to_string()))
        })
        .collect();
    anyhow::ensure!(
        !who.is_empty(),
        "no tokens: give institution:role:token,... as carepath bench-api prints them"
    );
    let iso = |t: i64| {
        jiff::Timestamp::from_second(t)
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default()
    };
    let mut mix = Mix(7);
    let mut out = Vec::with_capacity(4096);
    for _ in 0..4096 {
        let (role, token) = &who[mix.below(who.len() as u64) as usize];
        let dice = 1 + mix.below(100);
        let q = match dice {
            ..=25 => "limit=50".to_string(),
            26..=50 => format!("role={role}&limit=50"),
            51..=55 => "status=claimed&limit=50".to_string(),
            56..=60 => format!("status=active&role={role}&limit=50"),
            61..=68 => format!("due_before={}&limit=50", iso(now)),
            69..=75 => format!(
                "due_after={}&due_before={}&limit=50",
                iso(now),
                iso(now + 7 * 86_400)
            ),
            _ => {
                let cursor = format!(
                    "{}.{}.{}",
                    mix.below(4),
                    now - 14 * 86_400 + mix.below(44 * 86_400) as i64,
                    1 + mix.below(1_000_000)
                );
                if mix.below(2) == 0 {
                    format!("role={role}&cursor={cursor}&limit=50")
                } else {
                    format!("cursor={cursor}&limit=50")
                }
            }
        };
        out.push(Pull {
            path: format!("/queues/tasks?{q}"),
            token: token.clone(),
        });
    }
    Ok(out)
}

/// Drives `base` at `rate` requests a second for `seconds`; returns the summary as JSON.
pub(crate) async fn run(
    base: &str,
    tokens: &str,
    rate: f64,
    seconds: f64,
) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(
        rate > 0.0 && seconds > 0.0,
        "rate and duration must be positive"
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")?;
    let pulls = std::sync::Arc::new(pulls(tokens, jiff::Timestamp::now().as_second())?);
    let total = (rate * seconds).round() as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let (client, pulls, base) = (client.clone(), pulls.clone(), base.to_string());
        set.spawn(async move {
            let p = &pulls[i % pulls.len()];
            let ok = client
                .get(format!("{base}{}", p.path))
                .bearer_auth(&p.token)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map(|_| ())
                .is_ok();
            (due.elapsed(), ok)
        });
    }
    let mut latencies = Vec::with_capacity(total);
    let mut failed = 0u64;
    while let Some(done) = set.join_next().await {
        let (latency, ok) = done?;
        latencies.push(latency.as_secs_f64() * 1000.0);
        failed += u64::from(!ok);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0.0)
    };
    Ok(serde_json::json!({
        "target_rate": rate,
        "requests": latencies.len(),
        "achieved_rate": latencies.len() as f64 / elapsed,
        "failed": failed,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "p999_ms": pct(0.999),
        "max_ms": latencies.last().copied().unwrap_or(0.0),
    }))
}

#[cfg(test)]
mod tests {
    use super::pulls;

    #[test]
    fn the_mix_is_the_lua_scripts_and_the_same_every_run() {
        let a = pulls("lead:nurse:t1,clinic_a:case_manager:t2", 1_780_000_000).expect("pulls");
        let b = pulls("lead:nurse:t1,clinic_a:case_manager:t2", 1_780_000_000).expect("pulls");
        assert_eq!(a.len(), 4096);
        assert!(
            a.iter()
                .zip(&b)
                .all(|(x, y)| x.path == y.path && x.token == y.token)
        );
        let share =
            |needle: &str| a.iter().filter(|p| p.path.contains(needle)).count() as f64 / 4096.0;
        assert!(
            (0.20..0.30).contains(&share("cursor=")),
            "{}",
            share("cursor=")
        );
        assert!((0.05..0.20).contains(&share("due_before=")));
        assert!(
            a.iter()
                .all(|p| p.path.starts_with("/queues/tasks?") && p.path.ends_with("limit=50"))
        );
        assert!(pulls("", 0).is_err());
    }
}
