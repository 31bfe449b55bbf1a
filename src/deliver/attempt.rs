//! One delivery attempt, in stages: prepare (where it goes and how it is
//! signed: a configured webhook as configured now, or the task's own URL)
//! → send → classify (what the answer means: delivered, retry when, dead
//! letter, gone) → record (a report for the batched writer).
//!
//! May call: `deliver::{send, retry, ssrf, clients}`, `config`, `store`
//! (the report types), `metrics`, `clock`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::Instrument;

use super::clients::Clients;
use super::retry::retry_after_attempt;
use super::send::{Answer, Attempt, send};
use crate::clock::{Millis, SharedClock};
use crate::config::{Config, SigningKey};
use crate::store::{ClaimedDelivery, DeliveryKind, DeliveryReport, DeliveryVerdict};

/// One delivery attempt and what it needs.
pub(super) struct Job {
    pub clock: SharedClock,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub client: Clients,
    pub cfg: Arc<Config>,
    pub report: mpsc::Sender<DeliveryReport>,
}

/// Where one attempt goes and how it is signed.
struct Target<'a> {
    url: String,
    keys: &'a [SigningKey],
    headers: Vec<(String, String)>,
    /// A per-task URL: the SSRF guard applies.
    guarded: bool,
}

/// How an attempt is recorded: the verdict and what the receiver said.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    pub verdict: DeliveryVerdict,
    pub status: Option<u16>,
    pub error: Option<String>,
    /// The start of the receiver's answer.
    pub answer: Option<String>,
}

/// What `answer` to attempt number `attempt` (1-based) means, given the
/// retry schedule; `r` is the jitter draw. Pure.
pub fn classify(
    answer: Answer,
    attempt: u32,
    schedule: &[Duration],
    now: Millis,
    r: f64,
) -> Classified {
    let retry = |retry_after: Option<Duration>| match retry_after_attempt(
        schedule,
        attempt,
        retry_after,
        r,
    ) {
        Some(delay) => DeliveryVerdict::Retry {
            at: now + delay.as_millis() as Millis,
        },
        None => DeliveryVerdict::DeadLetter,
    };
    let kept = |body: String| (!body.is_empty()).then_some(body);
    match answer {
        Answer::Status { code, body, .. } if (200..300).contains(&code) => Classified {
            verdict: DeliveryVerdict::Delivered,
            status: Some(code),
            error: None,
            answer: kept(body),
        },
        Answer::Status {
            code: 410, body, ..
        } => Classified {
            verdict: DeliveryVerdict::Gone,
            status: Some(410),
            error: Some("410 Gone".into()),
            answer: kept(body),
        },
        Answer::Status {
            code,
            retry_after,
            body,
        } => Classified {
            // Only 429 and 503 say when to come back.
            verdict: retry(retry_after.filter(|_| matches!(code, 429 | 503))),
            status: Some(code),
            error: Some(format!("HTTP {code}")),
            answer: kept(body),
        },
        Answer::Blocked(reason) => Classified {
            verdict: DeliveryVerdict::DeadLetter,
            status: None,
            error: Some(format!("blocked: {reason}")),
            answer: None,
        },
        Answer::NoAnswer(error) => Classified {
            verdict: retry(None),
            status: None,
            error: Some(error),
            answer: None,
        },
    }
}

impl Job {
    /// Runs the attempt's stages in a span naming the task, the webhook
    /// and the attempt number.
    pub async fn attempt(self, d: ClaimedDelivery) {
        let span = tracing::info_span!(
            "attempt",
            task_id = %d.task_id,
            webhook = %d.webhook,
            attempt = d.attempts + 1
        );
        async move {
            let Some(target) = self.prepare(&d) else {
                tracing::warn!("the delivery's webhook is no longer configured; parked as webhook_removed (it resumes when a webhook of that name is configured again)");
                let error = format!("webhook {:?} is not configured", d.webhook);
                let parked = Classified {
                    verdict: DeliveryVerdict::WebhookRemoved,
                    status: None,
                    error: Some(error),
                    answer: None,
                };
                self.record(&d, parked, None).await;
                return;
            };
            let started = std::time::Instant::now();
            let answer = self.send(&d, &target).await;
            let took = started.elapsed();
            self.metrics.delivery_duration.observe(took.as_secs_f64());
            let latency_ms =
                (!matches!(answer, Answer::Blocked(_))).then_some(took.as_millis() as i64);
            let now = self.clock.now_ms();
            let c = classify(
                answer,
                d.attempts + 1,
                &self.cfg.delivery.retry_schedule,
                now,
                rand::random(),
            );
            self.log(&d, &c, now);
            self.record(&d, c, latency_ms).await;
        }
        .instrument(span)
        .await
    }

    /// Stage 1: where the delivery goes now. A configured webhook is
    /// whatever its name means now (its current URL, secret and headers);
    /// `None` when it left the configuration.
    fn prepare(&self, d: &ClaimedDelivery) -> Option<Target<'_>> {
        match d.kind {
            DeliveryKind::Webhook => {
                let w = self.cfg.webhooks.iter().find(|w| w.name == d.webhook)?;
                Some(Target {
                    url: w.url.to_string(),
                    keys: &w.keys,
                    headers: w
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    guarded: false,
                })
            }
            DeliveryKind::TaskUrl => Some(Target {
                url: d.url.clone(),
                keys: &self.cfg.delivery.keys,
                headers: Vec::new(),
                guarded: !self.cfg.delivery.allow_private_networks,
            }),
        }
    }

    /// Stage 2: the request, or the SSRF guard's refusal.
    async fn send(&self, d: &ClaimedDelivery, target: &Target<'_>) -> Answer {
        if target.guarded
            && let Err(reason) = url::Url::parse(&target.url)
                .map_err(|e| e.to_string())
                .and_then(|u| super::ssrf::check_url(&u))
        {
            return Answer::Blocked(reason);
        }
        let client = if target.guarded {
            &self.client.guarded
        } else {
            &self.client.trusted
        };
        send(
            client,
            &Attempt {
                url: &target.url,
                event_id: &d.event_id,
                body: d.body.as_bytes(),
                keys: target.keys,
                headers: &target.headers,
            },
        )
        .await
    }

    /// What an operator sees of the attempt, and the metrics.
    fn log(&self, d: &ClaimedDelivery, c: &Classified, now: Millis) {
        let error = c.error.as_deref().unwrap_or("");
        match &c.verdict {
            DeliveryVerdict::Delivered => {
                tracing::info!(status = c.status, "delivered");
                self.metrics
                    .enqueue_to_delivered
                    .observe((now - d.enqueued_at).max(0) as f64 / 1000.0);
            }
            DeliveryVerdict::Gone => {
                tracing::info!("receiver answered 410 Gone; not retrying")
            }
            DeliveryVerdict::Retry { at } => {
                let retry_in = std::time::Duration::from_millis((at - now).max(0) as u64);
                tracing::debug!(error, retry_in = ?retry_in, "delivery attempt failed")
            }
            DeliveryVerdict::DeadLetter if error.starts_with("blocked:") => {
                tracing::warn!(
                    reason = error,
                    "delivery blocked by the SSRF guard; dead-lettered"
                )
            }
            DeliveryVerdict::DeadLetter => {
                tracing::warn!(error, "delivery dead-lettered after the last retry")
            }
            DeliveryVerdict::WebhookRemoved => {}
        }
    }

    /// Stage 3: the report (and its line in the attempt log), for the
    /// batched writer.
    async fn record(&self, d: &ClaimedDelivery, c: Classified, latency_ms: Option<i64>) {
        self.metrics.delivery(match c.verdict {
            DeliveryVerdict::Delivered => "delivered",
            DeliveryVerdict::Retry { .. } => "retry",
            DeliveryVerdict::DeadLetter => "dead_letter",
            DeliveryVerdict::Gone => "gone",
            DeliveryVerdict::WebhookRemoved => "webhook_removed",
        });
        let _ = self
            .report
            .send(DeliveryReport {
                id: d.id,
                claim: d.claim,
                task_id: d.task_id.clone(),
                event_id: d.event_id.clone(),
                verdict: c.verdict,
                status: c.status,
                error: c.error,
                webhook: d.webhook.clone(),
                attempt: d.attempts + 1,
                latency_ms,
                answer: c.answer,
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn every_answer_is_classified() {
        let sched = [s(5), s(30)];
        let c = |a: Answer, n: u32| classify(a, n, &sched, 1_000, 0.5);
        let status = |code: u16, ra: Option<u64>| Answer::Status {
            code,
            retry_after: ra.map(s),
            body: String::new(),
        };
        assert_eq!(c(status(204, None), 1).verdict, DeliveryVerdict::Delivered);
        assert_eq!(c(status(410, None), 1).verdict, DeliveryVerdict::Gone);
        assert_eq!(
            c(status(500, Some(20)), 1).verdict,
            DeliveryVerdict::Retry { at: 6_000 },
            "a 500's Retry-After is not honoured"
        );
        assert_eq!(
            c(status(503, Some(20)), 1).verdict,
            DeliveryVerdict::Retry { at: 21_000 }
        );
        assert_eq!(
            c(status(429, Some(20)), 1).verdict,
            DeliveryVerdict::Retry { at: 21_000 }
        );
        assert_eq!(c(status(500, None), 3).verdict, DeliveryVerdict::DeadLetter);
        let blocked = c(Answer::Blocked("10.0.0.1 is private".into()), 1);
        assert_eq!(blocked.verdict, DeliveryVerdict::DeadLetter);
        assert_eq!(
            blocked.error.as_deref(),
            Some("blocked: 10.0.0.1 is private")
        );
        let lost = c(Answer::NoAnswer("timed out".into()), 2);
        assert_eq!(lost.verdict, DeliveryVerdict::Retry { at: 31_000 });
    }
}
