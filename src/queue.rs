//! Redis, through apalis-redis: it carries step and purge tasks, nothing more. A task is
//! only ids; what to do and whether it was done is in the ledger. Only the dispatcher and
//! the sweeper push here, a bounded number at a time.

use std::{
    fmt,
    sync::{Arc, LazyLock},
    time::Duration,
};

use apalis::prelude::{TaskBuilder, TaskId, TaskSink};
use apalis_redis::{Config, ConnectionManager, RedisStorage};
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::domain::StepKey;

/// Run steps: one step, or several steps of one run on their first attempt, which the
/// worker runs in one transaction. A step is its run and its position in the run's plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTask {
    pub run_id: Uuid,
    pub positions: Vec<i32>,
}

impl StepTask {
    /// The tasks that carry `steps`: one per run among them, in order.
    pub fn carrying(steps: &[StepKey]) -> Vec<StepTask> {
        let mut tasks: Vec<StepTask> = Vec::new();
        for step in steps {
            match tasks.last_mut() {
                Some(t) if t.run_id == step.run_id => t.positions.push(step.position),
                _ => tasks.push(StepTask { run_id: step.run_id, positions: vec![step.position] }),
            }
        }
        tasks
    }

    pub fn steps(&self) -> Vec<StepKey> {
        self.positions.iter().map(|&p| StepKey::new(self.run_id, p)).collect()
    }
}

/// Fire one private-email purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeTask {
    pub purge_id: i64,
}

/// Purge tasks one worker fetches at a time.
const PURGE_FETCH: usize = 32;

/// Moves tasks just pushed (`ARGV`, in the order they are to be fetched) to the front of
/// the active list (`KEYS[2]`), from the scheduled set (`KEYS[1]`) or, when a fetch has
/// promoted them already, from the active list itself; returns how many it moved. A task
/// in neither was fetched already and is left alone.
static TO_FRONT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"local moved = 0
        for i = #ARGV, 1, -1 do
            local id = ARGV[i]
            if redis.call('zrem', KEYS[1], id) == 1 or redis.call('lrem', KEYS[2], 1, id) == 1 then
                redis.call('lpush', KEYS[2], id)
                moved = moved + 1
            end
        end
        return moved",
    )
});

/// Tasks pushed per Redis call; keeps each call far below the client's response timeout.
const PUSH_CHUNK: usize = 256;

/// The step and purge queues of one install (one key prefix).
#[derive(Clone)]
pub struct Queues {
    prefix: String,
    conn: ConnectionManager,
    steps: RedisStorage<StepTask>,
    purges: RedisStorage<PurgeTask>,
    /// Notified after each push of steps, so this process's step worker fetches at once
    /// instead of at its next poll ([`Queues::step_pushes`]).
    pushed_steps: Arc<Notify>,
}

impl fmt::Debug for Queues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queues").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

/// Tasks Redis holds for one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Depth {
    /// Waiting for their time (delayed) or for promotion to the active list.
    pub scheduled: u64,
    /// Ready to be fetched.
    pub active: u64,
}

impl Depth {
    pub fn total(self) -> u64 {
        self.scheduled + self.active
    }
}

impl Queues {
    pub async fn connect(redis_url: &str, prefix: &str) -> anyhow::Result<Self> {
        use anyhow::Context;
        let conn = apalis_redis::connect(redis_url).await.with_context(|| {
            format!("cannot reach Redis at {}", crate::config::redact_url(redis_url))
        })?;
        Ok(Self::with_connection(conn, prefix))
    }

    pub fn with_connection(conn: ConnectionManager, prefix: &str) -> Self {
        let steps =
            RedisStorage::new(conn.clone()).with_config(Self::config(&format!("{prefix}:steps")));
        // Purges come due in bursts (a layoff's, 30 days later) and have no fairness to keep:
        // larger fetches.
        let purges = RedisStorage::new(conn.clone())
            .with_config(Self::config(&format!("{prefix}:purges")).batch_size(PURGE_FETCH));
        Self { prefix: prefix.to_string(), conn, steps, purges, pushed_steps: Arc::default() }
    }

    /// The settings every offboard queue uses. A worker fetches 4 tasks at a time: tasks it
    /// has fetched wait in the process for a free slot, behind each other, so a company's
    /// task fetched behind 32 of a layoff's waited for them (fairness under a layoff 2.26 →
    /// 1.59 with 4), and a task carries a run's steps, so fetches are few anyway.
    /// `lock_tasks(false)`: apalis' per-task lock
    /// costs an LREM over the whole active list (~870 tasks/s); the ledger's lease does that
    /// job. Pub/sub events are off: nothing reads them. Results stay on, because that is
    /// what acks a task (without it every task stays in its worker's in-flight set and is
    /// re-enqueued wholesale when that worker is gone); [`Queues::trim_finished`] drops them.
    fn config(queue: &str) -> Config {
        Config::default()
            .queue(queue)
            .batch_size(4)
            .lock_tasks(false)
            .emit_events(false)
            .heartbeat_interval(Duration::from_secs(5))
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn step_storage(&self) -> RedisStorage<StepTask> {
        self.steps.clone()
    }

    /// An item each time this process pushed steps (several pushes before a read are one
    /// item): the step worker's signal to fetch now. An idle worker otherwise finds a task
    /// only at its next poll, up to a poll interval after the dispatcher pushed it, on each
    /// hop of a run from one step to the next. Workers of other processes still poll.
    pub fn step_pushes(&self) -> impl Stream<Item = ()> + Unpin + Send + Sync + 'static {
        let pushed = self.pushed_steps.clone();
        Box::pin(futures::stream::unfold(pushed, |pushed| async move {
            pushed.notified().await;
            Some(((), pushed))
        }))
    }

    pub fn purge_storage(&self) -> RedisStorage<PurgeTask> {
        self.purges.clone()
    }

    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Pushes one task per entry of `tasks` (the steps it carries, of one run).
    pub async fn push_steps(&self, tasks: &[Vec<StepKey>]) -> anyhow::Result<()> {
        self.push_step_tasks(tasks, false).await
    }

    /// Pushes one task per entry of `tasks`, as [`Queues::push_steps`] does, then moves
    /// them to the front of the queue, in order: workers fetch them before every task
    /// already waiting (see [`crate::ledger::steps::into_lanes`]).
    ///
    /// apalis-redis pushes a task into the queue's scheduled set, due now, and a fetch
    /// moves what is due to the back of the active list before taking from its front; a
    /// script moves these from either place to the front, in one step, so a fetch in
    /// between cannot take a task twice or lose it.
    pub async fn push_steps_first(&self, tasks: &[Vec<StepKey>]) -> anyhow::Result<()> {
        self.push_step_tasks(tasks, true).await
    }

    /// Pushes the tasks under ids of ours (ULIDs, the kind apalis-redis gives), so that
    /// those `to_front` can be moved there by id once pushed.
    async fn push_step_tasks(&self, tasks: &[Vec<StepKey>], to_front: bool) -> anyhow::Result<()> {
        if tasks.is_empty() {
            return Ok(());
        }
        let config = Self::config(&format!("{}:steps", self.prefix));
        let mut storage = self.steps.clone();
        let mut conn = self.conn.clone();
        for chunk in tasks.chunks(PUSH_CHUNK) {
            let tasks: Vec<(String, StepTask)> = chunk
                .iter()
                .flat_map(|steps| StepTask::carrying(steps))
                .map(|task| (ulid::Ulid::generate().to_string(), task))
                .collect();
            let built: Vec<_> = tasks
                .iter()
                .map(|(id, task)| {
                    TaskBuilder::new(task.clone()).task_id(TaskId::from_string(id.clone())).build()
                })
                .collect();
            storage
                .push_all(futures::stream::iter(built))
                .await
                .map_err(|e| anyhow::anyhow!("pushing steps to Redis: {e}"))?;
            if to_front {
                let ids: Vec<&str> = tasks.iter().map(|(id, _)| id.as_str()).collect();
                TO_FRONT
                    .key(config.scheduled_jobs_set())
                    .key(config.active_jobs_list())
                    .arg(&ids)
                    .invoke_async::<u64>(&mut conn)
                    .await
                    .map_err(|e| anyhow::anyhow!("moving steps to the front of the queue: {e}"))?;
            }
        }
        self.pushed_steps.notify_one();
        Ok(())
    }

    /// One task per purge, to run at once (a purge is pushed only when it is due).
    pub async fn push_purges(&self, purge_ids: &[i64]) -> anyhow::Result<()> {
        let mut storage = self.purges.clone();
        for chunk in purge_ids.chunks(PUSH_CHUNK) {
            let tasks = chunk.iter().map(|&purge_id| PurgeTask { purge_id }).collect();
            storage
                .push_bulk(tasks)
                .await
                .map_err(|e| anyhow::anyhow!("pushing purges to Redis: {e}"))?;
        }
        Ok(())
    }

    async fn depth_of(&self, queue: &str) -> anyhow::Result<Depth> {
        let mut conn = self.conn.clone();
        let (scheduled, active): (u64, u64) = redis::pipe()
            .zcard(format!("{queue}:scheduled"))
            .llen(format!("{queue}:active"))
            .query_async(&mut conn)
            .await?;
        Ok(Depth { scheduled, active })
    }

    pub async fn step_depth(&self) -> anyhow::Result<Depth> {
        self.depth_of(&format!("{}:steps", self.prefix)).await
    }

    pub async fn purge_depth(&self) -> anyhow::Result<Depth> {
        self.depth_of(&format!("{}:purges", self.prefix)).await
    }

    pub async fn ping(&self) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok(())
    }

    /// apalis-redis keeps every finished task's id, data and metadata forever. Drops those of
    /// finished tasks, a bounded number per call, so a long-running install stays small.
    pub async fn trim_finished(&self, max: usize) -> anyhow::Result<u64> {
        let mut trimmed = 0;
        for queue in [format!("{}:steps", self.prefix), format!("{}:purges", self.prefix)] {
            let config = Self::config(&queue);
            let mut conn = self.conn.clone();
            for set in [config.done_jobs_set(), config.dead_jobs_set()] {
                let ids: Vec<String> =
                    redis::cmd("SPOP").arg(&set).arg(max).query_async(&mut conn).await?;
                if ids.is_empty() {
                    continue;
                }
                let mut pipe = redis::pipe();
                pipe.hdel(config.job_data_hash(), &ids).ignore();
                for id in &ids {
                    pipe.del(format!("{}:{id}", config.job_meta_hash())).ignore();
                }
                pipe.query_async::<()>(&mut conn).await?;
                trimmed += ids.len() as u64;
            }
        }
        Ok(trimmed)
    }
}
