//! MIAW server-sent events: `GET /eventrouter/v1/sse`. No task per stream:
//! the response body is a stream over a bounded channel, the ping timer and
//! the token's expiry; a gone client drops the body, which closes the channel
//! (the sender is pruned on the next publish) and decrements the open count.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use tokio::sync::mpsc;

use super::miaw::{Frame, STREAM_BUFFER, org_ok};
use super::state::{Req, Shared, SimResponse};
use super::{faults, util};

const PING: &[u8] = b"event: ping\ndata: 0\n\n";
const EXPIRED: &[u8] = b"event: error\ndata: Jwt is expired\n\n";

/// Decrements the subject's open-stream count when the body is dropped.
struct OpenGuard {
    shared: Arc<Shared>,
    subject: String,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if let Some(sub) = st.miaw.subjects.get_mut(&self.subject) {
            sub.open = sub.open.saturating_sub(1);
        }
    }
}

struct Live {
    rx: mpsc::Receiver<Frame>,
    ping: tokio::time::Interval,
    expiry: Pin<Box<tokio::time::Sleep>>,
    silenced: Arc<AtomicBool>,
    done: bool,
    _guard: OpenGuard,
}

pub(crate) fn is_sse(req_path: &str) -> bool {
    req_path.trim_end_matches('/') == "/eventrouter/v1/sse"
}

/// Handles the connect: faults, auth, replay; records it.
pub(crate) async fn connect(shared: Arc<Shared>, req: Req) -> (Response, bool) {
    let seq = shared.next_seq();
    let rule = shared
        .lock()
        .take_fault(req.method.as_str(), &req.path_and_query());
    if let Some(ms) = rule
        .as_ref()
        .and_then(|r| r.latency_ms)
        .filter(|ms| *ms > 0)
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(r) = rule.as_ref().filter(|r| faults::disrupts(r)) {
        let mut response = faults::response(r, &req.path);
        if let Some(secs) = r.retry_after {
            response.set_header("retry-after", secs.to_string());
        }
        let status = if r.drop_connection {
            0
        } else {
            response.status
        };
        shared.record(seq, &req, status, true);
        return (response.into_response(), r.drop_connection);
    }
    let (response, status) = open(&shared, &req);
    shared.record(seq, &req, status, rule.is_some());
    (response, false)
}

fn open(shared: &Arc<Shared>, req: &Req) -> (Response, u16) {
    let mut st = shared.lock();
    let m = &mut st.miaw;
    let (subject, exp_ms) = match m.authorize(req) {
        Ok(s) => s,
        Err(r) => return (r.into_response(), 401),
    };
    if !req.header("x-org-id").is_some_and(org_ok) {
        let r = SimResponse::json(400, &serde_json::json!({"message": "Invalid X-Org-Id"}));
        return (r.into_response(), 400);
    }
    let last = util::header(&req.headers, "last-event-id").map(str::to_owned);
    let ping_every = m.ping_interval;
    let limit = m.replay_limit;
    let sub = m
        .subjects
        .entry(subject.clone())
        .or_insert_with(super::miaw::Subject::new);
    sub.connects += 1;
    sub.last_event_ids.push(last.clone());
    sub.open += 1;
    sub.max_open = sub.max_open.max(sub.open);
    let mut replay: Vec<Bytes> = match last.as_deref().and_then(|l| l.trim().parse::<u64>().ok()) {
        Some(after) => sub
            .events
            .iter()
            .filter(|(id, _)| *id > after)
            .map(|(_, f)| f.clone())
            .collect(),
        None => Vec::new(),
    };
    if let Some(n) = limit {
        let skip = replay.len().saturating_sub(n);
        replay.drain(..skip);
    }
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    sub.senders.push(tx);
    let silenced = Arc::clone(&sub.silenced);
    drop(st);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let left = Duration::from_millis(u64::try_from(exp_ms - now_ms).unwrap_or(0));
    let start = tokio::time::Instant::now();
    let live = Live {
        rx,
        ping: tokio::time::interval_at(start + ping_every, ping_every),
        expiry: Box::pin(tokio::time::sleep_until(start + left)),
        silenced,
        done: false,
        _guard: OpenGuard {
            shared: Arc::clone(shared),
            subject,
        },
    };
    let head = futures_util::stream::iter(replay.into_iter().map(Ok::<Bytes, Infallible>));
    let tail = futures_util::stream::unfold(live, next_frame);
    let mut response = Response::new(Body::from_stream(head.chain(tail)));
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-cache"),
    );
    (response, 200)
}

async fn next_frame(mut s: Live) -> Option<(Result<Bytes, Infallible>, Live)> {
    if s.done {
        return None;
    }
    loop {
        tokio::select! {
            frame = s.rx.recv() => match frame {
                Some(Frame::Event(bytes)) => return Some((Ok(bytes), s)),
                Some(Frame::Expired) => {
                    s.done = true;
                    return Some((Ok(Bytes::from_static(EXPIRED)), s));
                }
                None => return None,
            },
            _ = s.ping.tick() => {
                if !s.silenced.load(Ordering::Relaxed) {
                    return Some((Ok(Bytes::from_static(PING)), s));
                }
            }
            () = &mut s.expiry => {
                s.done = true;
                return Some((Ok(Bytes::from_static(EXPIRED)), s));
            }
        }
    }
}
