//! The dispatcher's pass: ready steps to queued, within the global and per-company
//! limits, companies in turn; and how the picked steps travel as tasks.

use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::StepKey;

/// Limits that keep Redis small and tenants fair.
#[derive(Debug, Clone, Copy)]
pub struct DispatchLimits {
    pub max_in_flight: i64,
    pub max_in_flight_per_company: i64,
}

/// The pass (`$1` the global limit, `$2` the per-company limit, `$3` steps a task carries).
///
/// The companies with ready steps are found from the right end of `steps_ready_by_company`
/// (`ORDER BY company_id DESC`): within a company the entries are in `next_attempt_at`
/// order, and the steps dispatched since the last vacuum leave dead entries on the left,
/// oldest first, which a probe from the left read through on every pass (a hundred pages
/// and more during a layoff, growing with each step dispatched). From the right, a probe
/// meets the steps that became ready last, which are still ready. Which order the companies
/// are found in does not matter: turns decide.
pub const DISPATCH_SQL: &str = "WITH RECURSIVE ready_companies AS (
             (SELECT company_id FROM offboard.steps WHERE status = 'ready'
              ORDER BY company_id DESC LIMIT 1)
             UNION ALL
             SELECT (SELECT s.company_id FROM offboard.steps s
                     WHERE s.status = 'ready' AND s.company_id < r.company_id
                     ORDER BY s.company_id DESC LIMIT 1)
             FROM ready_companies r WHERE r.company_id IS NOT NULL),
         -- Each company's steps in flight, looked up by company in one object: joined to
         -- the companies, they would be a nested loop over both lists (see below).
         in_flight AS (
             SELECT coalesce(sum(n), 0) AS total,
                    coalesce(jsonb_object_agg(company_id, n), '{}') AS by_company
             FROM (SELECT company_id, count(*) AS n FROM offboard.steps
                   WHERE status IN ('queued', 'running') GROUP BY company_id) c),
         room AS (
             SELECT f.n, ceil(f.n::numeric / greatest(1, (SELECT count(company_id) FROM ready_companies)))::bigint AS turns
             FROM (SELECT greatest(0, $1 - (SELECT total FROM in_flight)) AS n) f),
         picked AS (
             SELECT c.run_id, c.position, c.turn, 'ready'::text AS status,
                    f.n AS company_in_flight
             FROM ready_companies r
             CROSS JOIN LATERAL (
                 SELECT coalesce((i.by_company ->> r.company_id::text)::bigint, 0) AS n
                 FROM in_flight i) f
             CROSS JOIN LATERAL (
                 SELECT x.run_id, x.position, dense_rank() OVER (ORDER BY x.run_first) AS turn
                 FROM (SELECT y.run_id, y.position,
                              min(y.rank) OVER (PARTITION BY y.run_id) AS run_first
                       FROM (SELECT s.run_id, s.position,
                                    row_number() OVER (ORDER BY s.next_attempt_at, s.run_id, s.position) AS rank
                             FROM offboard.steps s
                             WHERE s.company_id = r.company_id AND s.status = 'ready'
                               AND s.next_attempt_at <= now()
                             ORDER BY s.next_attempt_at, s.run_id, s.position
                             LIMIT least(greatest(0, $2 - f.n),
                                         (SELECT turns FROM room) * $3)) y) x) c
             WHERE r.company_id IS NOT NULL AND c.turn <= (SELECT turns FROM room)
             ORDER BY c.turn, c.run_id, c.position
             LIMIT (SELECT n FROM room)),
         -- A step of a run that is stopping is never queued; runs an operator's cancel or
         -- retry holds are left for the next pass (no lock waits in the dispatcher).
         free AS (
             SELECT r.id FROM offboard.runs r
             WHERE r.id IN (SELECT DISTINCT run_id FROM picked)
               AND r.status NOT IN ('canceling', 'canceled')
             FOR SHARE OF r SKIP LOCKED)
         -- Still ready (another writer may have changed the step since this statement's
         -- snapshot), said as `s.status = p.status`, which no partial index matches: the
         -- update finds each picked step by its key (nested loops only: see dispatch_ready),
         -- and its runs by `s.run_id`, which the primary key answers whichever side of the
         -- loop the plan puts the steps on.
         UPDATE offboard.steps s SET status = 'queued', queued_at = now()
         FROM picked p WHERE s.run_id = p.run_id AND s.position = p.position
           AND s.status = p.status AND s.run_id = ANY (ARRAY(SELECT id FROM free))
         RETURNING s.run_id, s.position, s.attempts, p.turn, s.company_id, p.company_in_flight";

/// What the pass's transaction runs before [`DISPATCH_SQL`]: the dispatchers' advisory lock
/// (true when this one holds it) and the planner settings the pass is planned with
/// (see [`dispatch_ready`]).
pub const DISPATCH_LOCK_SQL: &str =
    "SELECT pg_try_advisory_xact_lock(hashtext('offboard.dispatch'))
                AND set_config('enable_bitmapscan', 'off', true) = 'off'
                AND set_config('enable_seqscan', 'off', true) = 'off'
                AND set_config('enable_hashjoin', 'off', true) = 'off'
                AND set_config('enable_mergejoin', 'off', true) = 'off'
                AND set_config('plan_cache_mode', 'force_generic_plan', true) = 'force_generic_plan'";

/// `ready -> queued` for the steps that may start now, within the global and per-company
/// limits, taking companies in turn. A turn is one task: the ready steps of the company's
/// oldest run with any (see [`into_tasks`]), so a run's steps that became ready together
/// travel together. Dispatchers in several processes take turns on an advisory lock, so the
/// limits hold across them. Returns the steps to push to Redis after the commit, in the
/// order they were picked.
///
/// The cost follows the companies with ready steps, not the backlog: the companies are
/// found by a skip scan over `steps_ready_by_company`, and each contributes at most the
/// turns this pass can use — room / companies, rounded up, and never past its own limit.
/// A pass may so take fewer steps than there is room for (when some companies have fewer
/// ready steps than their share); the dispatcher then runs again, and the order in which
/// steps start is the same.
///
/// Bitmap scans are off for the pass: the in-flight count then reads `steps_in_flight`
/// with a plain index scan, which marks the entries of steps that have finished as dead
/// for the next pass, where a bitmap scan checked every one of them in the heap each time
/// (ten times the live ones during a burst, before vacuum removes them).
///
/// So are hash and merge joins: every join of the pass is a nested loop, each picked step
/// found by its key. Planned on a young ledger (`steps` analyzed at a few dozen rows, as
/// autovacuum leaves it early, or as the bench does after seeding), the update merged the
/// picked steps with the whole primary key, or hashed them and read it whole, and kept
/// doing so as the ledger grew: in one `bench layoff`, 69 of the 118 passes over 4 ms read
/// every step of the runs before the last one picked (8,276 rows and 4,015 buffers to queue
/// 4; `auto_explain`). The pass's other lists are so looked up, not joined: each company's
/// steps in flight in one object of them all, the runs it may queue steps of in an array.
/// Planned on a `steps` analyzed empty (one row, for the planner), the loop started from
/// the whole primary key and checked each step against the picked ones (26,340 steps and
/// 22,823 buffers to queue 22): the update names its runs by `s.run_id`, which the key
/// answers on either side of the loop.
///
/// Sequential scans are off too. PostgreSQL plans the pass anew for its first five passes
/// on a connection, then keeps one generic plan when that looks as cheap, and reuses it
/// for as long as the connection lives: nothing makes it plan again while the ledger is
/// never analyzed (autovacuum off; a new deployment before its first round). Made while
/// the ledger was nearly empty, that plan read `steps` sequentially, whole, three times a
/// pass once the ledger had grown: in one `bench layoff` (auto_explain), 215 passes of
/// 19–139 ms (median 53), 12.6 s of PostgreSQL, against 3.1 s for all other passes over
/// 2 ms. Every read of the pass has its index. Forcing a custom plan on every pass instead
/// was not tried: a plan costs ~1.6 ms (`pg_stat_statements`, `bench layoff`), more than
/// the pass itself now runs (~1.4 ms). For the same reason the generic plan is made at the
/// first pass on a connection (`plan_cache_mode`), not after five custom ones: with the
/// pool's connections taking turns, one pass in six was planned (`bench layoff`: 584 plans
/// for 3,631 passes, 1.74 ms each: 1.0 s of planning beside 4.7 s of running).
///
/// A stopping run is looked up once per run picked, not once per step, and so is a run
/// someone else holds: the pass takes a share lock on each picked run that is not
/// stopping, skipping the runs an operator's cancel or retry or a worker's group holds
/// (they lock the run first, everywhere), whose steps wait for the next pass; the pass
/// never waits. It locked each picked step instead (`FOR UPDATE SKIP LOCKED`), a lock
/// written into every step's row before its update wrote it again: `bench steps` measured
/// the pass at 0.336 ms of PostgreSQL a dispatched step with it, 0.192 without
/// (`pg_stat_statements`, see lab/RESULTS.md).
pub async fn dispatch_ready(
    pool: &PgPool,
    limits: DispatchLimits,
) -> Result<Vec<Dispatched>, sqlx::Error> {
    Ok(try_dispatch_ready(pool, limits).await?.unwrap_or_default())
}

/// [`dispatch_ready`], saying when it did not pass: `None` when another dispatcher's pass
/// held the lock. That pass read the ledger as it was when it began, so steps a commit
/// made ready since may be left for the next one: whoever was nudged for them must look
/// again soon, not wait for its next nudge.
pub async fn try_dispatch_ready(
    pool: &PgPool,
    limits: DispatchLimits,
) -> Result<Option<Vec<Dispatched>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar(DISPATCH_LOCK_SQL).fetch_one(&mut *tx).await?;
    if !locked {
        return Ok(None);
    }
    let picked: Vec<Dispatched> = sqlx::query_as(DISPATCH_SQL)
        .bind(limits.max_in_flight)
        .bind(limits.max_in_flight_per_company)
        .bind(MAX_STEPS_PER_TASK as i64)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    let mut picked = picked;
    picked.sort_by_key(|d| (d.turn, d.run_id, d.position));
    Ok(Some(picked))
}

/// A step the dispatcher moved to `queued`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Dispatched {
    pub run_id: Uuid,
    pub position: i32,
    /// Attempts made before this one.
    pub attempts: i32,
    /// Its company's turn in this pass (companies take turns).
    pub turn: i64,
    /// Its run's company.
    pub company_id: i64,
    /// Steps of its company queued or running before this pass.
    pub company_in_flight: i64,
}

impl Dispatched {
    pub fn key(&self) -> StepKey {
        StepKey::new(self.run_id, self.position)
    }
}

/// Steps one task carries at most.
pub const MAX_STEPS_PER_TASK: usize = 16;

/// Cuts dispatched steps into tasks, keeping their order: the steps of one run on their
/// first attempt travel together (up to [`MAX_STEPS_PER_TASK`]) and run in one transaction;
/// a step that has been attempted before travels alone, so a step that fails or kills its
/// worker cannot take its neighbours down with it again.
pub fn into_tasks(dispatched: &[Dispatched]) -> Vec<Vec<StepKey>> {
    let mut tasks: Vec<Vec<StepKey>> = Vec::new();
    let mut open: std::collections::HashMap<Uuid, usize> = std::collections::HashMap::new();
    for step in dispatched {
        if step.attempts > 0 {
            tasks.push(vec![step.key()]);
            continue;
        }
        match open.get(&step.run_id) {
            Some(&i) if tasks[i].len() < MAX_STEPS_PER_TASK => tasks[i].push(step.key()),
            _ => {
                open.insert(step.run_id, tasks.len());
                tasks.push(vec![step.key()]);
            }
        }
    }
    tasks
}

/// A company with fewer steps than this queued or running is light: its tasks go to the
/// front of the Redis queue ([`into_lanes`]). One task's worth: a run's next steps.
pub const LIGHT_COMPANY_IN_FLIGHT: i64 = MAX_STEPS_PER_TASK as i64;

/// The tasks of a pass, by where they join the Redis queue.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Lanes {
    /// Tasks of light companies: fetched before anything already waiting.
    pub front: Vec<Vec<StepKey>>,
    /// The rest: behind what is already waiting, in order.
    pub back: Vec<Vec<StepKey>>,
}

/// [`into_tasks`], each task in its lane. The per-company limit bounds what a company has
/// in flight, but what it has queued waits in one Redis list that workers take from the
/// front: a company with one run to offboard waited behind the tasks a layoff had already
/// queued (its limit's worth, less what the workers were running) on every step of its
/// run. A task goes to the front while its company, counting the tasks of this pass before
/// it, has fewer than [`LIGHT_COMPANY_IN_FLIGHT`] steps in flight; a busy company's tasks
/// queue at the back. Workers never wait for it: a front task is one a worker takes next,
/// and a busy company still gets every worker the light ones leave.
pub fn into_lanes(dispatched: &[Dispatched]) -> Lanes {
    let company: std::collections::HashMap<Uuid, (i64, i64)> =
        dispatched.iter().map(|d| (d.run_id, (d.company_id, d.company_in_flight))).collect();
    let mut in_flight: std::collections::HashMap<i64, i64> = std::collections::HashMap::new();
    let mut lanes = Lanes::default();
    for task in into_tasks(dispatched) {
        let (company_id, before) = company[&task[0].run_id];
        let steps = in_flight.entry(company_id).or_insert(before);
        let light = *steps < LIGHT_COMPANY_IN_FLIGHT;
        *steps += task.len() as i64;
        if light { lanes.front.push(task) } else { lanes.back.push(task) }
    }
    lanes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(run: u128, position: i32, company_id: i64, company_in_flight: i64) -> Dispatched {
        let run_id = Uuid::from_u128(run);
        Dispatched { run_id, position, attempts: 0, turn: 1, company_id, company_in_flight }
    }

    #[test]
    fn a_company_s_tasks_go_to_the_front_until_it_has_a_task_s_worth_in_flight() {
        let light: Vec<Dispatched> = (0..12).map(|p| step(1, p, 7, 5)).collect();
        let then: Vec<Dispatched> = (0..3).map(|p| step(2, p, 7, 5)).collect();
        let busy = step(3, 0, 8, LIGHT_COMPANY_IN_FLIGHT);
        let passed: Vec<Dispatched> = light.iter().chain(&then).copied().chain([busy]).collect();
        let lanes = into_lanes(&passed);
        // 5 in flight: light, then 17 with the first task: no longer.
        assert_eq!(lanes.front, vec![light.iter().map(Dispatched::key).collect::<Vec<_>>()]);
        assert_eq!(
            lanes.back,
            vec![then.iter().map(Dispatched::key).collect::<Vec<_>>(), vec![busy.key()]]
        );
    }
}
