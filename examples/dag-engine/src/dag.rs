//! The demo's workload: a seeded random DAG of tasks in several flows and namespaces, and
//! what each task's worker will do.
//!
//! Contract: the same `(tasks, seed)` always gives the same DAG, the same outcomes and the
//! same work times, so `--seed` repeats a run's decisions (not its timing). Edges only go
//! from a task to a later task of the same flow, so the graph is acyclic by construction.
//! Most tasks succeed; a failed or cancelled task makes every task downstream of it
//! cancelled by the engine, so a few early failures prune whole branches.

use std::time::Duration;

use completions::{EngineError, ExecutionId, FlowId, Namespace, Outcome};

/// The namespaces tasks are spread over (a flow lives in one namespace).
pub const NAMESPACES: [&str; 3] = ["billing", "search", "ingest"];
/// Roughly how many tasks one flow holds.
const FLOW_SIZE: usize = 30;
/// A task's parents are picked among this many tasks right before it in its flow: small
/// enough to make deep chains, large enough for fan-in and fan-out.
const PARENT_WINDOW: usize = 8;

/// What a task's worker reports when its work is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// `complete`.
    Succeed,
    /// `fail`, as a crashed worker would.
    Fail,
    /// `cancel`, as an operator would.
    Cancel,
}

impl Plan {
    /// The outcome this plan writes.
    pub fn outcome(self) -> Outcome {
        match self {
            Plan::Succeed => Outcome::Succeeded,
            Plan::Fail => Outcome::Failed,
            Plan::Cancel => Outcome::Cancelled,
        }
    }
}

/// One task of the DAG.
#[derive(Clone, Debug)]
pub struct Task {
    /// Its execution id: `<flow>/t<index in flow>`.
    pub id: ExecutionId,
    /// Its flow's namespace.
    pub namespace: Namespace,
    /// Its flow.
    pub flow: FlowId,
    /// Indexes (into [`Dag::tasks`]) of the tasks it waits for; empty for a root.
    pub parents: Vec<usize>,
    /// What its worker reports, if it runs (it does not when an upstream task did not succeed).
    pub plan: Plan,
    /// How long its worker "works" before reporting.
    pub work: Duration,
}

/// The whole workload.
#[derive(Clone, Debug)]
pub struct Dag {
    /// Every task; a task's parents come before it.
    pub tasks: Vec<Task>,
    /// `children[i]`: the tasks that wait for task `i`.
    pub children: Vec<Vec<usize>>,
    /// How many flows.
    pub flows: usize,
}

impl Dag {
    /// Builds the DAG of `tasks` tasks for `seed`. `tasks` must be at least 1.
    pub fn generate(tasks: usize, seed: u64) -> Result<Self, EngineError> {
        if tasks == 0 {
            return Err(EngineError::invalid("--tasks", "0", "the demo needs at least one task"));
        }
        let mut rng = SplitMix(seed);
        let flows = tasks.div_ceil(FLOW_SIZE);
        let mut all = Vec::with_capacity(tasks);
        for flow_index in 0..flows {
            // Spread the remainder over the first flows so that sizes differ by at most one.
            let size = tasks / flows + usize::from(flow_index < tasks % flows);
            let namespace = Namespace::new(NAMESPACES[flow_index % NAMESPACES.len()])?;
            let flow = FlowId::new(format!("{}-{flow_index:02}", namespace.as_str()))?;
            let first = all.len();
            for j in 0..size {
                let mut parents = Vec::new();
                // The first task is the flow's root; a few later ones are extra roots.
                if j > 0 && rng.below(100) >= 8 {
                    let window = j.min(PARENT_WINDOW);
                    let wanted = 1 + rng.below(3.min(window as u64)) as usize;
                    while parents.len() < wanted {
                        let parent = first + j - 1 - rng.below(window as u64) as usize;
                        if !parents.contains(&parent) {
                            parents.push(parent);
                        }
                    }
                    parents.sort_unstable();
                }
                let plan = match rng.below(100) {
                    0..96 => Plan::Succeed,
                    96..98 => Plan::Fail,
                    _ => Plan::Cancel,
                };
                let work = Duration::from_millis(2 + rng.below(24));
                let id = ExecutionId::new(format!("{flow}/t{j:03}"))?;
                all.push(Task { id, namespace: namespace.clone(), flow: flow.clone(), parents, plan, work });
            }
        }
        let mut children = vec![Vec::new(); all.len()];
        for (i, task) in all.iter().enumerate() {
            for &p in &task.parents {
                children[p].push(i);
            }
        }
        Ok(Self { tasks: all, children, flows })
    }

    /// The outcome each task must end with: its plan when every parent's expected outcome
    /// is a success, else cancelled by the engine.
    pub fn expected_outcomes(&self) -> Vec<Outcome> {
        let mut expected: Vec<Outcome> = Vec::with_capacity(self.tasks.len());
        for task in &self.tasks {
            let runs = task.parents.iter().all(|&p| expected[p] == Outcome::Succeeded);
            expected.push(if runs { task.plan.outcome() } else { Outcome::Cancelled });
        }
        expected
    }

    /// The longest chain of dependencies, in tasks (a DAG of roots only has depth 1).
    pub fn depth(&self) -> usize {
        let mut depth = vec![0usize; self.tasks.len()];
        for (i, task) in self.tasks.iter().enumerate() {
            depth[i] = 1 + task.parents.iter().map(|&p| depth[p]).max().unwrap_or(0);
        }
        depth.into_iter().max().unwrap_or(0)
    }
}

/// splitmix64: a tiny, well-studied generator; plenty for picking edges and outcomes, and
/// it keeps the sequence for a seed fixed forever (a crate's generator may change between
/// versions, which would break `--seed`).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    /// A number in `0..n` (`n` > 0); the modulo bias is irrelevant at these sizes.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_dag_other_seed_other_dag() {
        let shape = |d: &Dag| d.tasks.iter().map(|t| (t.id.clone(), t.parents.clone(), t.plan)).collect::<Vec<_>>();
        let a = Dag::generate(200, 7).unwrap();
        assert_eq!(shape(&a), shape(&Dag::generate(200, 7).unwrap()));
        assert_ne!(shape(&a), shape(&Dag::generate(200, 8).unwrap()));
    }

    #[test]
    fn edges_stay_in_their_flow_and_point_forward() {
        let dag = Dag::generate(240, 1).unwrap();
        assert_eq!(dag.tasks.len(), 240);
        assert_eq!(dag.flows, 8);
        for (i, task) in dag.tasks.iter().enumerate() {
            for &p in &task.parents {
                assert!(p < i, "task {i} waits for a later task {p}");
                assert_eq!(dag.tasks[p].flow, task.flow);
                assert!(dag.children[p].contains(&i));
            }
        }
        let namespaces: std::collections::BTreeSet<_> = dag.tasks.iter().map(|t| t.namespace.as_str()).collect();
        assert_eq!(namespaces.len(), NAMESPACES.len());
        let ids: std::collections::HashSet<_> = dag.tasks.iter().map(|t| &t.id).collect();
        assert_eq!(ids.len(), 240, "execution ids are unique");
        assert!(dag.depth() >= 5, "chains are deep enough to show promotion: {}", dag.depth());
    }

    #[test]
    fn every_outcome_occurs_and_failures_propagate() {
        let dag = Dag::generate(240, 3).unwrap();
        let expected = dag.expected_outcomes();
        for outcome in [Outcome::Succeeded, Outcome::Failed, Outcome::Cancelled] {
            assert!(expected.contains(&outcome), "{outcome} never expected");
        }
        let pruned =
            dag.tasks.iter().zip(&expected).filter(|(t, o)| **o == Outcome::Cancelled && t.plan != Plan::Cancel);
        assert!(pruned.count() > 0, "no task was cancelled because of an upstream failure");
    }

    #[test]
    fn zero_tasks_is_refused_with_the_reason() {
        let error = Dag::generate(0, 1).unwrap_err().to_string();
        assert!(error.contains("--tasks") && error.contains("at least one task"), "{error}");
    }
}
