//! Placement decisions kept for `explain_placement`: the last `capacity` placements' policy,
//! winner and runner-up with the score inputs they had, recorded at placement time into a ring
//! (O(1) per placement, no hashing, the oldest overwritten). The weighing and the sentence are
//! left to `explain_placement`, which is rare: it scans the ring, O(capacity).

use crate::policy::{Inputs, Policy, Terms, Weights};
use crate::{ShapeId, TaskId, WorkerId};

/// A candidate as it stood when the decision was made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    pub worker: WorkerId,
    pub inputs: Inputs,
    pub warm: bool,
}

impl Snapshot {
    fn terms(&self, weights: &Weights) -> Terms {
        let mut terms = self.inputs.terms(weights);
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

impl Decision {
    /// One sentence: the policy, why the winner, and the next best; `kind` is the shape's.
    pub fn describe(&self, kind: &str, weights: &Weights) -> String {
        let w = &self.winner;
        let why = match self.policy {
            Policy::Composite => {
                let t = w.terms(weights);
                format!(
                    "availability {:.2}, success {:.2}, speed {:.2}, fit {:.2}, cost {:.2}, \
                     affinity {:.2} = {:.2}",
                    t.availability,
                    t.success,
                    t.speed,
                    t.fit,
                    t.cost,
                    t.affinity,
                    t.total()
                )
            }
            Policy::RoundRobin => "it had gone longest without new work".to_owned(),
            Policy::LeastLoaded => {
                format!("{:.0}% of its capacity free", 100.0 * w.inputs.availability)
            }
            Policy::Performance => {
                format!("speed {:.2}x the fleet at kind '{kind}'", w.inputs.speed)
            }
            Policy::Cost => format!(
                "${:.2}/h x {:.2} of the worker at speed {:.2}x = {:.3} $/h per unit of speed",
                w.inputs.cost_per_hour,
                w.inputs.share,
                w.inputs.speed,
                w.inputs.relative_cost()
            ),
            Policy::Affinity if w.warm => {
                format!("affinity key {} is warm there", self.affinity)
            }
            Policy::Affinity => format!(
                "no warm worker for affinity key {}; least loaded ({:.0}% free)",
                self.affinity,
                100.0 * w.inputs.availability
            ),
        };
        let mut out = format!("placed on worker {} by {}: {why}", w.worker, self.policy);
        if self.hard_affinity {
            out.push_str(" (hard affinity)");
        } else if self.policy != Policy::Affinity && w.warm {
            out.push_str(&format!(" (affinity key {} warm)", self.affinity));
        }
        match &self.runner_up {
            Some(r) => {
                let value = match self.policy {
                    Policy::Composite => format!(" at {:.2}", r.terms(weights).total()),
                    Policy::LeastLoaded => {
                        format!(" with {:.0}% free", 100.0 * r.inputs.availability)
                    }
                    Policy::Performance => format!(" at {:.2}x", r.inputs.speed),
                    Policy::Cost => format!(" at {:.3}", r.inputs.relative_cost()),
                    Policy::RoundRobin | Policy::Affinity => String::new(),
                };
                out.push_str(&format!("; next best worker {}{value}", r.worker));
            }
            None => out.push_str("; no other worker could take it"),
        }
        out
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
