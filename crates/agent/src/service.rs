//! The agent as an RPC service: it serves the proxy manager's methods on its
//! host's topic and casts heartbeats to the server.

use std::sync::Arc;

use navigator_core::ForwardId;
use navigator_rpc::messages::args;
use navigator_rpc::transport::{decode_args, encode_reply};
use navigator_rpc::{
    Incoming, MAX_USAGE_IDS, RemoteError, RpcError, ServerClient, Target, Transport, methods,
    topics,
};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{Agent, Answer, Request, specs_from_entries};

/// Heartbeats expire, unless a server took them, after this many
/// `report_interval`s.
const HEARTBEAT_TTL_INTERVALS: u32 = 3;

/// Ordered messages handled as one batch at most, and queued for the worker
/// at most: a bound on the memory and on the time one batch holds the state.
const MAX_BATCH: usize = 1024;

/// `get_usage` calls answered at once, beside the one message at a time of
/// every other method.
const MAX_CONCURRENT_USAGE_CALLS: usize = 8;

/// Serves `agent` on `transport` until `shutdown` is cancelled, then shuts the
/// backend down.
pub async fn run(
    agent: Arc<Agent>,
    transport: Arc<dyn Transport>,
    shutdown: CancellationToken,
) -> Result<(), RpcError> {
    let host = agent.config().host.clone();
    let mut direct = transport
        .listen(&Target::host(topics::PROXY, &host))
        .await?;
    let mut fanout = transport
        .listen(&Target {
            fanout: true,
            ..Target::topic(topics::PROXY)
        })
        .await?;
    tracing::info!(%host, "agent listening on {}.{host}", topics::PROXY);

    let heartbeat = tokio::spawn(heartbeat(
        agent.clone(),
        // A heartbeat older than a few intervals says nothing about now.
        ServerClient::new(transport.clone())
            .with_report_ttl(agent.config().report_interval * HEARTBEAT_TTL_INTERVALS),
        transport.reconnects(),
        shutdown.clone(),
    ));
    let usage_calls = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_USAGE_CALLS));
    // Every method but get_usage changes or reports the desired state, so
    // they are handled in arrival order by one worker, which takes every
    // message already queued as one batch (`Agent::run_batch`: one kernel
    // transaction for all of them, as kube-proxy's sync loop). The channel
    // holds a batch's worth; past that the rest wait in the transport's
    // queue. get_usage only reads counters, so it is answered beside them
    // rather than behind a long reconcile (its caller waits 2 s at most).
    let (ordered, mut to_handle) = tokio::sync::mpsc::channel::<Incoming>(MAX_BATCH);
    let worker = tokio::spawn({
        let agent = agent.clone();
        async move {
            let linger = agent.batch_linger();
            let mut last_batch = 0;
            while let Some(first) = to_handle.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match to_handle.try_recv() {
                        Ok(incoming) => batch.push(incoming),
                        Err(_) => break,
                    }
                }
                // While changes keep coming (the last batch held several),
                // a backend that pays per transaction is given more of them
                // (`Backend::batch_linger`); a lone change goes at once.
                if last_batch > 1 && !linger.is_zero() {
                    let deadline = tokio::time::Instant::now() + linger;
                    while batch.len() < MAX_BATCH {
                        match tokio::time::timeout_at(deadline, to_handle.recv()).await {
                            Ok(Some(incoming)) => batch.push(incoming),
                            _ => break,
                        }
                    }
                }
                last_batch = batch.len();
                handle_batch(&agent, batch).await;
            }
        }
    });
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            msg = direct.recv() => msg,
            msg = fanout.recv() => msg,
        };
        let Some(incoming) = incoming else {
            tracing::warn!(%host, "RPC transport closed the agent's queue");
            break;
        };
        if incoming.method == methods::GET_USAGE {
            // A few at a time; past that the loop waits for one to finish.
            if let Ok(permit) = usage_calls.clone().acquire_owned().await {
                let agent = agent.clone();
                tokio::spawn(async move {
                    handle(&agent, incoming).await;
                    drop(permit);
                });
            }
            continue;
        }
        let sent = tokio::select! {
            _ = shutdown.cancelled() => break,
            sent = ordered.send(incoming) => sent,
        };
        if sent.is_err() {
            tracing::warn!(%host, "the agent's message worker stopped");
            break;
        }
    }
    // The batch being handled finishes (a reconcile is not cut in half);
    // the messages already taken from the transport follow it.
    drop(ordered);
    let _ = worker.await;
    heartbeat.abort();
    agent.shutdown().await;
    tracing::info!(%host, "agent stopped");
    Ok(())
}

/// The span of the lines about `incoming`: its method and the ids of the API
/// request behind it (none for periodic work), so that they can be found by
/// the server's request id or the caller's global one.
fn span_of(incoming: &Incoming) -> tracing::Span {
    let span = tracing::info_span!(
        "rpc",
        method = %incoming.method,
        request_id = tracing::field::Empty,
        global_request_id = tracing::field::Empty,
    );
    if let Some(id) = &incoming.context.request_id {
        span.record("request_id", tracing::field::display(id));
    }
    if let Some(id) = &incoming.context.global_request_id {
        span.record("global_request_id", tracing::field::display(id));
    }
    span
}

/// Answers `incoming` with `result`, logging a failure in `span`.
fn answer(incoming: Incoming, span: &tracing::Span, result: Result<Value, RemoteError>) {
    let _entered = span.enter();
    if let Err(e) = &result {
        tracing::warn!(method = %incoming.method, error = %e, "RPC method failed");
    }
    if let Some(reply) = incoming.reply {
        // The caller may have timed out and gone; nothing to do then.
        let _ = reply.send(result);
    }
}

/// Handles one message outside the batches (get_usage).
async fn handle(agent: &Agent, incoming: Incoming) {
    let span = span_of(&incoming);
    let result = dispatch_usage(agent, &incoming)
        .instrument(span.clone())
        .await;
    answer(incoming, &span, result);
}

/// Handles ordered messages as one batch: decodes each (a malformed one is
/// answered at once; it changes nothing), runs the rest through
/// [`Agent::run_batch`] in arrival order, and answers each with its own
/// result.
async fn handle_batch(agent: &Agent, batch: Vec<Incoming>) {
    let mut requests = Vec::with_capacity(batch.len());
    let mut waiting = Vec::with_capacity(batch.len());
    for incoming in batch {
        let span = span_of(&incoming);
        match decode(&incoming) {
            Ok(request) => {
                requests.push(request);
                waiting.push((incoming, span));
            }
            Err(e) => answer(incoming, &span, Err(e)),
        }
    }
    if requests.is_empty() {
        return;
    }
    // A batch of one keeps its message's request ids on every line.
    let span = match waiting.as_slice() {
        [(_, span)] => span.clone(),
        _ => tracing::info_span!("batch", messages = waiting.len()),
    };
    let answers = agent.run_batch(requests).instrument(span).await;
    for ((incoming, span), answer_of) in waiting.into_iter().zip(answers) {
        let result = match answer_of {
            Answer::Sync(result) => encode_reply(&result),
            Answer::Forward(result) => encode_reply(&result),
            Answer::Removed => Ok(Value::Null),
            Answer::State(state) => encode_reply(&state),
        };
        answer(incoming, &span, result);
    }
}

/// The change an ordered message asks for.
fn decode(incoming: &Incoming) -> Result<Request, RemoteError> {
    match incoming.method.as_str() {
        methods::SYNC_FORWARDS => {
            let args: args::SyncForwards = decode_args(incoming)?;
            let (forwards, rejected) = specs_from_entries(&args.forwards);
            Ok(Request::Sync {
                forwards,
                rejected,
                generation: args.generation,
                buckets: args.buckets,
            })
        }
        methods::CREATE_FORWARD => {
            let args: args::CreateForward = decode_args(incoming)?;
            let spec = args
                .forward
                .to_spec()
                .map_err(|reason| RemoteError::new("ValueError", reason))?;
            Ok(Request::Upsert(spec))
        }
        methods::DELETE_FORWARD => {
            let args: args::DeleteForward = decode_args(incoming)?;
            let id = args.id.parse().map_err(|e: navigator_core::ParseError| {
                RemoteError::new("ValueError", e.to_string())
            })?;
            Ok(Request::Remove(id))
        }
        methods::GET_STATE => Ok(Request::State),
        // oslo.messaging's name for a method the endpoint lacks, so that
        // callers (and Python peers) recognise it.
        other => Err(no_such_method(other)),
    }
}

fn no_such_method(method: &str) -> RemoteError {
    RemoteError::new(
        "NoSuchMethod",
        format!("the agent has no method {method:?}"),
    )
}

async fn dispatch_usage(agent: &Agent, incoming: &Incoming) -> Result<Value, RemoteError> {
    if incoming.method != methods::GET_USAGE {
        return Err(no_such_method(&incoming.method));
    }
    let args: args::GetUsage = decode_args(incoming)?;
    if args.ids.len() > MAX_USAGE_IDS {
        return Err(RemoteError::new(
            "ValueError",
            format!(
                "get_usage: {} forward ids, more than {MAX_USAGE_IDS}",
                args.ids.len()
            ),
        ));
    }
    let ids = args
        .ids
        .iter()
        .map(|id| id.parse())
        .collect::<Result<Vec<ForwardId>, _>>()
        .map_err(|e: navigator_core::ParseError| {
            RemoteError::new("ValueError", format!("get_usage: {e}"))
        })?;
    encode_reply(&agent.usage(&ids).await)
}

/// Reports the agent's state every `report_interval`, and retries forwards
/// that failed, so that a port freed by another program is picked up. After
/// a transport reconnect it reports generation 0 at once, which asks the
/// server for a full sync.
async fn heartbeat(
    agent: Arc<Agent>,
    server: ServerClient,
    mut reconnects: Option<watch::Receiver<u64>>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(agent.config().report_interval);
    loop {
        let reconnected = async {
            match reconnects.as_mut() {
                Some(reconnects) => reconnects.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
            ok = reconnected => {
                if !ok {
                    // The transport is gone; stop watching it.
                    reconnects = None;
                    continue;
                }
                tracing::info!("RPC transport reconnected; asking the server for a full sync");
                agent.request_full_sync().await;
            }
        }
        agent.retry_failed().await;
        if let Err(e) = server.report_state(agent.heartbeat_state().await).await {
            tracing::warn!(error = %e, "cannot report state to the server");
        }
    }
}
