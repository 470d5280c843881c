//! Placement decisions kept for `explain_placement`: the last `capacity` placements' policy,
//! winner and runner-up with the score inputs they had, recorded at placement time into a ring
//! (O(1) per placement, no hashing, the oldest overwritten). The weighing is left to
//! `explain_placement`, which is rare: it scans the ring, O(capacity); the sentence to the caller,
//! who knows the workers' names.

use crate::policy::{Inputs, Policy, Terms, Weights};
use crate::{ShapeId, TaskId, WorkerId};

/// A candidate as it stood when the decision was made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    pub worker: WorkerId,
    /// Its score inputs, under the policies whose explanations weigh them (see `weighs_inputs`).
    pub inputs: Option<Inputs>,
    pub warm: bool,
}

/// Whether an explanation under `policy` shows score inputs. Round-robin and fragmentation rank
/// by no weighed input, so their decisions are recorded without taking them: a sixth of a
/// placement's work, for numbers no explanation would show.
pub fn weighs_inputs(policy: Policy) -> bool {
    !matches!(policy, Policy::RoundRobin | Policy::Fragmentation)
}

impl Snapshot {
    fn inputs(&self) -> Inputs {
        self.inputs
            .expect("the decisions of policies that weigh inputs keep them")
    }

    fn terms(&self, weights: &Weights) -> Terms {
        let mut terms = self.inputs().terms(weights);
        terms.affinity = if self.warm { weights.affinity } else { 0.0 };
        terms
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub policy: Policy,
    pub shape: ShapeId,
    pub affinity: u64,
    pub hard_affinity: bool,
    pub winner: Snapshot,
    pub runner_up: Option<Snapshot>,
}

/// A placement decision as data (what `explain_placement` returns), for the caller to word with
/// the workers' names.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub policy: Policy,
    /// The task's kind (performance compares speeds at it).
    pub kind: String,
    pub worker: WorkerId,
    /// The winner's inputs to its ranking, by name, in the order the policy weighs them:
    /// composite, the weighted terms (availability, success, speed, fit, cost, affinity) that sum
    /// to `score`; least_loaded, availability (the share of its capacity free); performance,
    /// speed (against the fleet at the kind); cost, cost_per_hour, share (of the worker the task
    /// takes) and speed; affinity, availability when no worker was warm; round_robin, none.
    pub terms: Vec<(&'static str, f64)>,
    /// What the policy ranked by (composite: the sum of the terms; least_loaded: availability;
    /// performance: speed; cost: $/h per unit of speed, lowest wins); None for round_robin and
    /// affinity, which do not rank by one number.
    pub score: Option<f64>,
    /// The task's affinity key was warm on the winner.
    pub warm: bool,
    /// The task's affinity key handle (0 = none).
    pub affinity: u64,
    pub hard_affinity: bool,
    /// The next best worker, if another could take the task.
    pub runner_up: Option<WorkerId>,
    /// Its `score`.
    pub runner_up_score: Option<f64>,
}

impl Decision {
    /// The decision as data; `kind` is the shape's.
    pub fn explain(&self, kind: &str, weights: &Weights) -> Explanation {
        let w = &self.winner;
        let terms = match self.policy {
            Policy::Composite => {
                let t = w.terms(weights);
                vec![
                    ("availability", t.availability),
                    ("success", t.success),
                    ("speed", t.speed),
                    ("fit", t.fit),
                    ("cost", t.cost),
                    ("affinity", t.affinity),
                ]
            }
            Policy::RoundRobin | Policy::Fragmentation => vec![],
            Policy::Affinity if w.warm => vec![],
            Policy::LeastLoaded | Policy::Affinity => {
                vec![("availability", w.inputs().availability)]
            }
            Policy::Performance => vec![("speed", w.inputs().speed)],
            Policy::Cost => {
                let i = w.inputs();
                vec![
                    ("cost_per_hour", i.cost_per_hour),
                    ("share", i.share),
                    ("speed", i.speed),
                ]
            }
        };
        Explanation {
            policy: self.policy,
            kind: kind.to_owned(),
            worker: w.worker,
            terms,
            score: self.score(w, weights),
            warm: w.warm,
            affinity: self.affinity,
            hard_affinity: self.hard_affinity,
            runner_up: self.runner_up.map(|r| r.worker),
            runner_up_score: self.runner_up.and_then(|r| self.score(&r, weights)),
        }
    }

    fn score(&self, candidate: &Snapshot, weights: &Weights) -> Option<f64> {
        match self.policy {
            Policy::Composite => Some(candidate.terms(weights).total()),
            Policy::LeastLoaded => Some(candidate.inputs().availability),
            Policy::Performance => Some(candidate.inputs().speed),
            Policy::Cost => Some(candidate.inputs().relative_cost()),
            Policy::RoundRobin | Policy::Affinity | Policy::Fragmentation => None,
        }
    }
}

#[derive(Debug)]
pub struct Decisions {
    capacity: usize,
    /// The ring: grows to `capacity`, then `next` overwrites the oldest.
    ring: Vec<(TaskId, Decision)>,
    next: usize,
}

impl Decisions {
    pub fn new(capacity: usize) -> Decisions {
        Decisions {
            capacity,
            ring: Vec::new(),
            next: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    pub fn record(&mut self, task: TaskId, decision: Decision) {
        if self.ring.len() < self.capacity {
            self.ring.push((task, decision));
        } else {
            self.ring[self.next] = (task, decision);
            self.next = (self.next + 1) % self.capacity;
        }
    }

    /// The latest decision recorded for the task (a task placed again has several).
    pub fn get(&self, task: TaskId) -> Option<&Decision> {
        let (older, newer) = self.ring.split_at(self.next);
        newer
            .iter()
            .chain(older)
            .rev()
            .find(|(t, _)| *t == task)
            .map(|(_, d)| d)
    }
}
