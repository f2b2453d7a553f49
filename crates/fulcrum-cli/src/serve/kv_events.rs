//! Publishing the prefix cache's changes to routers, in vLLM's KV-event format, so that routers built for vLLM
//! (llm-d's precise prefix-cache scorer, event-driven cache-aware routers) follow Fulcrum's cache too.
//!
//! Wire format, as vLLM's ZMQ publisher sends it: a PUB socket sends each batch as three frames — the topic, the
//! batch's sequence number (8 bytes, big-endian) and a msgpack payload. The payload is vLLM's `KVEventBatch` in
//! msgspec's array form, `[ts, [event, …], data_parallel_rank]`, each event a tagged array:
//! `["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium, lora_name]`,
//! `["BlockRemoved", block_hashes, medium]` or `["AllBlocksCleared"]`. Block hashes are our prefix keys read as signed
//! 64-bit integers (what Python's `hash` gave vLLM's first publishers, and what Go consumers decode); `medium` is
//! `"CPU"`. With a replay endpoint, a ROUTER socket answers a request frame holding a start sequence number (8 bytes,
//! big-endian) with every buffered batch from there as `[seq, payload]` and ends with `[-1, ""]`.
//!
//! An endpoint with `*`, `::`, or the `ipc://` scheme is bound; any other is connected to (vLLM's rule: a stable
//! address binds, a volatile one connects). Connecting never blocks serving: batches wait in the replay buffer, and a
//! failed or lost connection is retried in the background (backing off to 30 s).

use fulcrum_engine::blocks::KvEvent;
use futures_util::StreamExt;
use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use zeromq::{RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

/// Batches kept for replay.
const REPLAY_BATCHES: usize = 10_000;

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct Publisher {
    /// The PUB socket's address.
    pub endpoint: String,
    /// The ROUTER socket's address for replay requests, if any.
    pub replay: Option<String>,
    /// First frame of every message.
    pub topic: String,
    /// The block size the events state.
    pub block_size: usize,
}

/// An endpoint as the socket library takes it, and whether to bind it.
fn resolve(endpoint: &str) -> Result<(String, bool), String> {
    let Some(rest) = endpoint
        .strip_prefix("tcp://")
        .or_else(|| endpoint.strip_prefix("ipc://"))
    else {
        return Err(format!(
            "KV-event endpoint `{endpoint}`: expected tcp://HOST:PORT or ipc://PATH"
        ));
    };
    if endpoint.starts_with("ipc://") {
        return Ok((endpoint.to_string(), true));
    }
    if rest
        .rsplit_once(':')
        .is_none_or(|(_, port)| port.parse::<u16>().is_err())
    {
        return Err(format!("KV-event endpoint `{endpoint}`: no port"));
    }
    let bind = rest.contains('*') || rest.contains("::");
    // ZeroMQ's `*` is every interface.
    Ok((endpoint.replacen("tcp://*:", "tcp://0.0.0.0:", 1), bind))
}

/// Checks the endpoints, so that a bad flag fails at start-up.
pub fn check(p: &Publisher) -> Result<(), String> {
    resolve(&p.endpoint)?;
    if let Some(r) = &p.replay {
        if !resolve(r)?.1 {
            return Err(format!(
                "KV-event replay endpoint `{r}` must be one to bind (tcp://*:PORT, tcp://[::]:PORT or ipc://PATH)"
            ));
        }
    }
    Ok(())
}

/// A block hash as the events carry it.
fn hash(h: u64) -> i64 {
    h as i64
}

/// Writes `["BlockStored", …]` and its siblings, in msgspec's array form of vLLM's structs.
fn write_event(out: &mut Vec<u8>, event: &KvEvent, block_size: usize) {
    use rmp::encode::*;
    // Writing into a Vec cannot fail.
    let hashes = |out: &mut Vec<u8>, hs: &[u64]| {
        write_array_len(out, hs.len() as u32).unwrap();
        for &h in hs {
            write_sint(out, hash(h)).unwrap();
        }
    };
    match event {
        KvEvent::Stored {
            hashes: hs,
            parent,
            tokens,
        } => {
            write_array_len(out, 8).unwrap();
            write_str(out, "BlockStored").unwrap();
            hashes(out, hs);
            match parent {
                Some(p) => write_sint(out, hash(*p)).map(|_| ()).unwrap(),
                None => write_nil(out).unwrap(),
            }
            write_array_len(out, tokens.len() as u32).unwrap();
            for &t in tokens {
                write_uint(out, t as u64).unwrap();
            }
            write_uint(out, block_size as u64).unwrap();
            write_nil(out).unwrap(); // lora_id
            write_str(out, "CPU").unwrap(); // medium
            write_nil(out).unwrap(); // lora_name
        }
        KvEvent::Removed { hashes: hs } => {
            write_array_len(out, 3).unwrap();
            write_str(out, "BlockRemoved").unwrap();
            hashes(out, hs);
            write_str(out, "CPU").unwrap();
        }
        KvEvent::AllCleared => {
            write_array_len(out, 1).unwrap();
            write_str(out, "AllBlocksCleared").unwrap();
        }
    }
}

/// One batch's payload: `[ts, events, data_parallel_rank]`.
pub fn encode(ts: f64, events: &[KvEvent], block_size: usize) -> Vec<u8> {
    use rmp::encode::*;
    let mut out = Vec::with_capacity(64 + events.len() * 32);
    write_array_len(&mut out, 3).unwrap();
    write_f64(&mut out, ts).unwrap();
    write_array_len(&mut out, events.len() as u32).unwrap();
    for e in events {
        write_event(&mut out, e, block_size);
    }
    write_uint(&mut out, 0).unwrap();
    out
}

/// A message of the given frames.
fn message(frames: Vec<Vec<u8>>) -> ZmqMessage {
    let frames: Vec<axum::body::Bytes> = frames.into_iter().map(axum::body::Bytes::from).collect();
    ZmqMessage::try_from(frames).expect("at least one frame")
}

/// Starts the publisher on the current Tokio runtime; returns the sender that the engine's sink feeds.
pub async fn start(p: Publisher) -> Result<mpsc::UnboundedSender<Vec<KvEvent>>, String> {
    let (endpoint, bind) = resolve(&p.endpoint)?;
    // A subscriber to connect to may come up any time later: keep trying (backing off to 30 s) rather than give up.
    let mut options = zeromq::SocketOptions::default();
    options.no_connect_timeout();
    let mut socket = zeromq::PubSocket::with_options(options);
    if bind {
        socket
            .bind(&endpoint)
            .await
            .map_err(|e| format!("cannot bind the KV-event endpoint {}: {e}", p.endpoint))?;
    }
    let mut replay = match &p.replay {
        Some(r) => {
            let mut router = RouterSocket::new();
            router
                .bind(&resolve(r)?.0)
                .await
                .map_err(|e| format!("cannot bind the KV-event replay endpoint {r}: {e}"))?;
            Some(router)
        }
        None => None,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut state = State {
            rx,
            buffer: VecDeque::new(),
            seq: 0,
            topic: p.topic.into_bytes(),
            block_size: p.block_size,
        };
        // A connected (not bound) socket is connected again whenever the subscriber goes away; batches meanwhile
        // wait in the replay buffer.
        let mut monitor = socket.monitor();
        let mut connected = bind;
        let mut delay = Duration::from_millis(100);
        let mut warned = false;
        let mut monitoring = true;
        loop {
            if !connected {
                let done = {
                    let connecting = socket.connect(&endpoint);
                    tokio::pin!(connecting);
                    loop {
                        tokio::select! {
                            done = &mut connecting => break Some(done),
                            batch = state.rx.recv() => match batch {
                                Some(events) => { state.next(&events); }
                                None => break None,
                            },
                            request = recv_opt(&mut replay) => state.replay(replay.as_mut(), request).await,
                        }
                    }
                };
                match done {
                    None => return,
                    Some(Ok(())) => {
                        connected = true;
                        delay = Duration::from_millis(100);
                        warned = false;
                    }
                    Some(Err(e)) => {
                        if !warned {
                            eprintln!(
                                "warning: KV events: cannot connect to {}: {e}; retrying",
                                p.endpoint
                            );
                            warned = true;
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                }
                continue;
            }
            tokio::select! {
                batch = state.rx.recv() => match batch {
                    Some(events) => {
                        let msg = state.next(&events);
                        // PUB drops what no subscriber takes; a send error is a closed socket.
                        if let Err(e) = socket.send(msg).await {
                            eprintln!("warning: KV events: publishing failed: {e}");
                        }
                    }
                    None => return,
                },
                request = recv_opt(&mut replay) => state.replay(replay.as_mut(), request).await,
                event = monitor.next(), if !bind && monitoring => match event {
                    Some(zeromq::SocketEvent::Disconnected(_)) => connected = false,
                    Some(_) => {}
                    None => monitoring = false,
                },
            }
        }
    });
    Ok(tx)
}

/// The next replay request, or never when there is no replay socket.
async fn recv_opt(router: &mut Option<RouterSocket>) -> zeromq::ZmqResult<ZmqMessage> {
    match router {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// The publisher task's state.
struct State {
    rx: mpsc::UnboundedReceiver<Vec<KvEvent>>,
    /// Recent batches as (sequence number, payload).
    buffer: VecDeque<(u64, Vec<u8>)>,
    seq: u64,
    topic: Vec<u8>,
    block_size: usize,
}

impl State {
    /// Numbers and encodes a batch, keeps it for replay, and returns its PUB message.
    fn next(&mut self, events: &[KvEvent]) -> ZmqMessage {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let payload = encode(ts, events, self.block_size);
        let seq = self.seq;
        self.seq += 1;
        if self.buffer.len() == REPLAY_BATCHES {
            self.buffer.pop_front();
        }
        self.buffer.push_back((seq, payload.clone()));
        message(vec![
            self.topic.clone(),
            seq.to_be_bytes().to_vec(),
            payload,
        ])
    }

    /// Answers a replay request: every buffered batch from its start sequence number, then the end marker.
    async fn replay(
        &self,
        router: Option<&mut RouterSocket>,
        request: zeromq::ZmqResult<ZmqMessage>,
    ) {
        let (Some(router), Ok(request)) = (router, request) else {
            return;
        };
        // [identity, empty delimiter, start] from a REQ socket; [identity, start] from a DEALER.
        let frames = request.into_vec();
        let (Some(identity), Some(start)) = (frames.first(), frames.last()) else {
            return;
        };
        let delimiter = frames.len() == 3;
        let Ok(start) = <[u8; 8]>::try_from(start.as_ref()) else {
            eprintln!("warning: KV events: a replay request without an 8-byte sequence number");
            return;
        };
        let start = u64::from_be_bytes(start);
        let reply = |seq: &[u8], payload: &[u8]| {
            let mut frames = vec![identity.to_vec()];
            if delimiter {
                frames.push(Vec::new());
            }
            frames.push(seq.to_vec());
            frames.push(payload.to_vec());
            message(frames)
        };
        for (seq, payload) in &self.buffer {
            if *seq >= start
                && router
                    .send(reply(&seq.to_be_bytes(), payload))
                    .await
                    .is_err()
            {
                return;
            }
        }
        let _ = router.send(reply(&(-1i64).to_be_bytes(), b"")).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_bind_or_connect_as_vllm_decides() {
        assert_eq!(
            resolve("tcp://*:5557").unwrap(),
            ("tcp://0.0.0.0:5557".into(), true)
        );
        assert_eq!(
            resolve("tcp://[::]:5557").unwrap(),
            ("tcp://[::]:5557".into(), true)
        );
        assert_eq!(
            resolve("tcp://epp.default:5557").unwrap(),
            ("tcp://epp.default:5557".into(), false)
        );
        assert!(resolve("ipc:///tmp/kv").unwrap().1);
        assert!(resolve("http://x:1").is_err());
        assert!(resolve("tcp://host").is_err());
        let p = Publisher {
            endpoint: "tcp://*:1".into(),
            replay: Some("tcp://127.0.0.1:2".into()),
            topic: String::new(),
            block_size: 16,
        };
        assert!(check(&p).unwrap_err().contains("replay"));
    }

    #[test]
    fn a_batch_is_msgspecs_array_form() {
        let events = [
            KvEvent::Stored {
                hashes: vec![1, u64::MAX],
                parent: None,
                tokens: vec![7; 4],
            },
            KvEvent::Removed { hashes: vec![5] },
            KvEvent::AllCleared,
        ];
        let bytes = encode(1.5, &events, 2);
        let mut want = vec![0x93, 0xcb];
        want.extend(1.5f64.to_be_bytes());
        want.push(0x93); // three events
        want.extend([0x98, 0xab]); // eight fields; "BlockStored" (11 bytes)
        want.extend(b"BlockStored");
        want.extend([0x92, 0x01, 0xff]); // hashes [1, -1]
        want.push(0xc0); // no parent
        want.extend([0x94, 7, 7, 7, 7, 0x02, 0xc0, 0xa3]);
        want.extend(b"CPU");
        want.push(0xc0);
        want.extend([0x93, 0xac]);
        want.extend(b"BlockRemoved");
        want.extend([0x91, 0x05, 0xa3]);
        want.extend(b"CPU");
        want.extend([0x91, 0xb0]);
        want.extend(b"AllBlocksCleared");
        want.push(0x00); // data-parallel rank
        assert_eq!(bytes, want);
    }
}
