//! Placement decisions kept for `explain_placement`: a bounded map from task to the policy, the
//! winner's score terms and the runner-up, recorded at placement time (O(1) per placement, the
//! oldest dropped first).

use std::collections::VecDeque;

use crate::id_hash::IdHashMap;
use crate::policy::{Policy, Terms};
use crate::{ShapeId, TaskId, WorkerId};

/// A candidate as it stood when the decision was made.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub worker: WorkerId,
    pub terms: Terms,
    pub availability: f64,
    pub speed: f64,
    pub cost_per_hour: f64,
    pub relative_cost: f64,
    pub warm: bool,
}

#[derive(Debug, Clone, PartialEq)]
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
    pub fn describe(&self, kind: &str) -> String {
        let w = &self.winner;
        let why = match self.policy {
            Policy::Composite => {
                let t = &w.terms;
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
            Policy::LeastLoaded => format!("{:.0}% of its capacity free", 100.0 * w.availability),
            Policy::Performance => {
                format!("speed {:.2}x the fleet at kind '{kind}'", w.speed)
            }
            Policy::Cost => format!(
                "${:.2}/h at speed {:.2}x = {:.3} $/h per unit of speed",
                w.cost_per_hour, w.speed, w.relative_cost
            ),
            Policy::Affinity if w.warm => {
                format!("affinity key {} is warm there", self.affinity)
            }
            Policy::Affinity => format!(
                "no warm worker for affinity key {}; least loaded ({:.0}% free)",
                self.affinity,
                100.0 * w.availability
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
                    Policy::Composite => format!(" at {:.2}", r.terms.total()),
                    Policy::LeastLoaded => format!(" with {:.0}% free", 100.0 * r.availability),
                    Policy::Performance => format!(" at {:.2}x", r.speed),
                    Policy::Cost => format!(" at {:.3}", r.relative_cost),
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
    map: IdHashMap<TaskId, Decision>,
    order: VecDeque<TaskId>,
}

impl Decisions {
    pub fn new(capacity: usize) -> Decisions {
        Decisions {
            capacity,
            map: IdHashMap::default(),
            order: VecDeque::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    pub fn record(&mut self, task: TaskId, decision: Decision) {
        if self.map.insert(task, decision).is_none() {
            self.order.push_back(task);
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    pub fn get(&self, task: TaskId) -> Option<&Decision> {
        self.map.get(&task)
    }
}
