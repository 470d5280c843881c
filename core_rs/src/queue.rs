//! The pending queue: priority classes, FIFO (by caller-given `seq`) within a class.
//!
//! Tasks are kept grouped per shape so placement can look at one head per shape and skip a whole
//! shape that no worker can take, without touching its other tasks. Every operation is
//! O(log n) in the shape's queue length (plus O(1) hash lookups).

use std::cmp::Reverse;
use std::collections::BTreeSet;

use crate::error::{invalid, CoreResult};
use crate::id_hash::IdHashMap;
use crate::{ShapeId, TaskId, PRIORITY_CLASSES};

/// A queued task's placement-relevant facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingTask {
    pub shape: ShapeId,
    pub priority: u8,
    pub seq: u64,
    pub timeout_ms: u64,
}

/// Order within a shape: higher priority first, then lower seq, then lower task handle (so equal
/// seqs still have one deterministic order).
pub type QueueKey = (Reverse<u8>, u64, TaskId);

#[derive(Debug, Default)]
pub struct PendingQueue {
    tasks: IdHashMap<TaskId, PendingTask>,
    per_shape: Vec<BTreeSet<QueueKey>>,
    /// Shapes with at least one pending task, so a placement round never scans idle shapes.
    active: BTreeSet<ShapeId>,
    by_priority: [u64; PRIORITY_CLASSES],
}

fn key(task: TaskId, p: &PendingTask) -> QueueKey {
    (Reverse(p.priority), p.seq, task)
}

impl PendingQueue {
    /// Check a priority is one of the four classes.
    pub fn check_priority(priority: u8) -> CoreResult<()> {
        if usize::from(priority) >= PRIORITY_CLASSES {
            return Err(invalid(format!(
                "priority must be 0 (LOW) to 3 (URGENT), got {priority}"
            )));
        }
        Ok(())
    }

    /// Queue a task. The caller has checked the shape exists and the task is not placed.
    pub fn push(&mut self, task: TaskId, pending: PendingTask) -> CoreResult<()> {
        Self::check_priority(pending.priority)?;
        if self.tasks.contains_key(&task) {
            return Err(invalid(format!("task {task} is already pending")));
        }
        let shape_idx = shape_index(pending.shape);
        if self.per_shape.len() <= shape_idx {
            self.per_shape.resize_with(shape_idx + 1, BTreeSet::new);
        }
        self.per_shape[shape_idx].insert(key(task, &pending));
        self.active.insert(pending.shape);
        self.by_priority[usize::from(pending.priority)] += 1;
        self.tasks.insert(task, pending);
        Ok(())
    }

    /// Drop a pending task; None if it was not pending.
    pub fn remove(&mut self, task: TaskId) -> Option<PendingTask> {
        let pending = self.tasks.remove(&task)?;
        let queue = &mut self.per_shape[shape_index(pending.shape)];
        queue.remove(&key(task, &pending));
        if queue.is_empty() {
            self.active.remove(&pending.shape);
        }
        self.by_priority[usize::from(pending.priority)] -= 1;
        Some(pending)
    }

    pub fn get(&self, task: TaskId) -> Option<&PendingTask> {
        self.tasks.get(&task)
    }

    pub fn contains(&self, task: TaskId) -> bool {
        self.tasks.contains_key(&task)
    }

    /// The best pending task of a shape.
    pub fn head(&self, shape: ShapeId) -> Option<QueueKey> {
        self.per_shape
            .get(shape_index(shape))
            .and_then(|q| q.first().copied())
    }

    /// Shapes that have pending tasks, in id order.
    pub fn active_shapes(&self) -> impl Iterator<Item = ShapeId> + '_ {
        self.active.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Queue depth for LOW, NORMAL, HIGH, URGENT.
    pub fn by_priority(&self) -> [u64; PRIORITY_CLASSES] {
        self.by_priority
    }

    /// Pending tasks in classes strictly above `priority`.
    pub fn queued_above(&self, priority: u8) -> u64 {
        self.by_priority[usize::from(priority) + 1..].iter().sum()
    }
}

fn shape_index(shape: ShapeId) -> usize {
    usize::try_from(shape).expect("shape ids are vector indices")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(shape: ShapeId, priority: u8, seq: u64) -> PendingTask {
        PendingTask {
            shape,
            priority,
            seq,
            timeout_ms: 0,
        }
    }

    #[test]
    fn higher_priority_then_lower_seq_comes_first() {
        let mut q = PendingQueue::default();
        q.push(1, task(0, 1, 5)).unwrap();
        q.push(2, task(0, 1, 3)).unwrap();
        q.push(3, task(0, 3, 9)).unwrap();
        q.push(4, task(0, 0, 1)).unwrap();
        let mut order = Vec::new();
        while let Some((_, _, t)) = q.head(0) {
            q.remove(t).unwrap();
            order.push(t);
        }
        assert_eq!(order, vec![3, 2, 1, 4]);
        assert!(q.is_empty());
        assert_eq!(
            q.active_shapes().count(),
            0,
            "an empty shape must leave the active set"
        );
    }

    #[test]
    fn counts_follow_pushes_and_removes() {
        let mut q = PendingQueue::default();
        q.push(1, task(2, 0, 1)).unwrap();
        q.push(2, task(2, 2, 1)).unwrap();
        q.push(3, task(5, 3, 1)).unwrap();
        assert_eq!(q.by_priority(), [1, 0, 1, 1]);
        assert_eq!(q.queued_above(0), 2);
        assert_eq!(q.queued_above(3), 0);
        assert!(q.remove(2).is_some());
        assert!(q.remove(2).is_none(), "a task is removed once");
        assert_eq!(q.by_priority(), [1, 0, 0, 1]);
        assert_eq!(q.active_shapes().collect::<Vec<_>>(), vec![2, 5]);
    }

    #[test]
    fn duplicates_and_bad_priorities_are_refused() {
        let mut q = PendingQueue::default();
        q.push(1, task(0, 1, 1)).unwrap();
        assert!(q.push(1, task(0, 2, 2)).is_err());
        assert!(q.push(2, task(0, 4, 2)).is_err());
        assert_eq!(q.len(), 1);
    }
}
