//! The pending queue: weighted fair sharing between tenants, priority classes in strict order
//! (or as shares) within a tenant, strict FIFO (by the caller's `seq`) within one tenant, class
//! and shape, and aging.
//!
//! Order. Weighted fair queuing between tenants: each tenant has a virtual time (work placed /
//! tenant weight) and the active tenant whose next unit of work would finish first in virtual
//! time (vt + 1/weight) goes next. Inside it, by [`PriorityMode`]: strict (the default) takes
//! the highest class that has a task placement can use, so priority means "skip ahead"; shares
//! gives each class a virtual time (work placed / class weight) and chooses the same way as
//! between tenants (URGENT first on a tie). Finish tags, not start tags, so that near-zero
//! weights give strict order. A tenant or class that becomes active again starts at the current
//! virtual time, so an idle period earns no credit to burst with later. A task's work is its GPU
//! count (at least 1). Aging moves a waiting task up one class per `aging_ms` of waiting, so a
//! LOW task's wait is bounded under a stream of higher-priority work, in either mode.
//!
//! Structure. A flow is one (tenant, class); inside it tasks are kept per shape, so placement
//! can skip a shape no worker can take without touching its tasks. Each (flow, shape) queue is a
//! `BTreeSet` by (seq, task). The active tenants by virtual time and each flow's per-shape heads
//! by (seq, task) sit in indexed heaps (`Ranked`), where each tenant and shape queue keeps its
//! slot, so the move a placement makes in each is one sift rather than a removal and an
//! insertion; a tenant's active classes (four at most) sit in an array by class, scanned; aging
//! deadlines sit in one min-heap with lazy deletion. Push, remove, take and promote are O(log n)
//! each (plus O(1) hash lookups).
//!
//! A placement round walks the queue with [`Round`]: `next` returns the best task whose shape
//! is not marked dead; a dead shape's heads (and flows or tenants left with nothing but dead
//! shapes) are set aside for the round and restored by `end_round`, O(log n) each. So in strict
//! mode a lower class goes ahead of a higher one only with tasks no worker could take for the
//! higher class this round. A task held back to wait for a warm worker (`hold`) takes its
//! (flow, shape) queue out of the round the same way, so the tasks behind it never overtake it.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, BinaryHeap};

use std::str::FromStr;

use crate::error::{invalid, CoreError, CoreResult};
use crate::id_hash::IdHashMap;
use crate::ranked::Ranked;
use crate::{ShapeId, TaskId, WorkerId, PRIORITY_CLASSES};

/// Tenant handle (the control plane interns tenant names).
pub type TenantId = u32;

/// A queued task's placement-relevant facts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PendingTask {
    pub shape: ShapeId,
    /// As submitted: 0 = LOW .. 3 = URGENT.
    pub priority: u8,
    pub seq: u64,
    pub timeout_ms: u64,
    /// Not placed on this worker while another worker could ever run the shape.
    pub avoid: Option<WorkerId>,
    pub tenant: TenantId,
    /// Interned affinity key; 0 = none.
    pub affinity: u64,
    pub hard_affinity: bool,
    /// When it was queued, on the caller's clock (for aging).
    pub enqueued_ms: u64,
    /// Work charged to its tenant and class when placed (its GPU count, at least 1).
    pub work: u32,
    /// GPUs it holds once placed, counted against its tenant's GPU cap.
    pub gpus: u32,
}

impl PendingTask {
    /// A task with only the basic facts (tenant 0, no affinity, nothing avoided).
    pub fn basic(shape: ShapeId, priority: u8, seq: u64, timeout_ms: u64) -> PendingTask {
        PendingTask {
            shape,
            priority,
            seq,
            timeout_ms,
            avoid: None,
            tenant: 0,
            affinity: 0,
            hard_affinity: false,
            enqueued_ms: 0,
            work: 1,
            gpus: 0,
        }
    }
}

/// How priority classes share a tenant's turns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PriorityMode {
    /// A higher class goes before any lower class of the same tenant ("skip ahead"); aging keeps
    /// lower classes from starving.
    #[default]
    Strict,
    /// Classes share placements by their weights (`Fairness::class_weights`).
    Shares,
}

impl FromStr for PriorityMode {
    type Err = CoreError;

    fn from_str(s: &str) -> CoreResult<Self> {
        match s {
            "strict" => Ok(PriorityMode::Strict),
            "shares" => Ok(PriorityMode::Shares),
            other => Err(invalid(format!(
                "unknown priority mode '{other}': use strict (a higher class always goes first) \
                 or shares (classes share by their weights)"
            ))),
        }
    }
}

/// How the queue orders tasks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fairness {
    pub mode: PriorityMode,
    /// Shares of LOW, NORMAL, HIGH, URGENT (mode shares only; checked in both modes).
    pub class_weights: [f64; PRIORITY_CLASSES],
    /// 0 = no aging.
    pub aging_ms: u64,
}

impl Default for Fairness {
    fn default() -> Self {
        Fairness {
            mode: PriorityMode::default(),
            class_weights: [1.0, 2.0, 3.0, 4.0],
            aging_ms: 60_000,
        }
    }
}

impl Fairness {
    pub fn check(&self) -> CoreResult<()> {
        for w in self.class_weights {
            check_weight("priority weight", w)?;
        }
        Ok(())
    }

    /// A flow's position among its tenant's classes, given its virtual time: the finish tag of
    /// one unit of work with shares; with strict order the same for every class, so the class
    /// alone decides (URGENT first).
    fn class_key(&self, vt: f64, class: u8) -> u64 {
        match self.mode {
            PriorityMode::Strict => 0,
            PriorityMode::Shares => bits(vt + 1.0 / self.class_weights[usize::from(class)]),
        }
    }
}

pub fn check_weight(name: &str, w: f64) -> CoreResult<()> {
    if !w.is_finite() || w <= 0.0 {
        return Err(invalid(format!(
            "{name} must be a finite number > 0, got {w}"
        )));
    }
    Ok(())
}

/// Delay scheduling state of one (flow, shape) queue, as in Spark's delay scheduling: the
/// queue's head may wait for a warm worker; if the queue launches nothing for the locality wait
/// it is relaxed (its tasks take any worker, warm ones still preferred) until one of its tasks
/// is placed warm again. Kept per queue, not per task, so a queue whose model is short of warm
/// workers drains onto cold ones at full speed instead of one task per wait.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Locality {
    /// Since when its head has been waiting without a launch.
    pub waiting_since: Option<u64>,
    pub relaxed: bool,
}

/// One (flow, shape) queue: its tasks by seq and its delay scheduling state.
#[derive(Debug)]
struct ShapeQueue {
    tasks: BTreeSet<(u64, TaskId)>,
    locality: Locality,
    /// Its slot in its flow's `heads`.
    slot: u32,
}

/// A flow is one (tenant, class).
type FlowKey = (TenantId, u8);
/// A task's place in FIFO order: (seq, task).
type Fifo = (u64, TaskId);
/// A tenant's active classes: (finish tag bits, URGENT first on a tie).
type ClassKey = (u64, Reverse<u8>);

/// A tenant's active classes in [`ClassKey`] order, one entry per class at most. There are four
/// classes, so a scan of an array is the cheapest ordered set.
#[derive(Debug, Default)]
struct Classes([Option<u64>; PRIORITY_CLASSES]);

impl Classes {
    fn insert(&mut self, (key, Reverse(class)): ClassKey) {
        self.0[usize::from(class)] = Some(key);
    }

    /// Whether the entry was there.
    fn remove(&mut self, &(key, Reverse(class)): &ClassKey) -> bool {
        let entry = &mut self.0[usize::from(class)];
        let listed = *entry == Some(key);
        if listed {
            *entry = None;
        }
        listed
    }

    fn first(&self) -> Option<ClassKey> {
        (0..PRIORITY_CLASSES as u8)
            .filter_map(|class| Some((self.0[usize::from(class)]?, Reverse(class))))
            .min()
    }
}

#[derive(Debug, Default)]
struct Flow {
    len: usize,
    /// The head of each of its shape queues, the first in FIFO order first.
    heads: Ranked<Fifo>,
    /// The shape of each slot of `heads`.
    shapes: Vec<ShapeId>,
    /// Work placed / class weight: the start tag of its next task.
    vt: f64,
    /// Its position among its tenant's classes (`Fairness::class_key`).
    key: u64,
}

#[derive(Debug)]
struct Tenant {
    weight: f64,
    /// Pending tasks; the tenant is active while this is > 0.
    len: usize,
    vt: f64,
    /// Its position among the active tenants: the finish tag of one unit of work.
    key: u64,
    /// Virtual time of the last class served, where a newly active class starts.
    class_clock: f64,
    classes: Classes,
    /// Its slot in `PendingQueue::active`.
    slot: u32,
    /// GPUs its placed tasks hold, and the most they may (None = no cap).
    gpus: u32,
    max_gpus: Option<u32>,
}

impl Tenant {
    /// Whether placing a task of `gpus` GPUs would take it past its GPU cap. A task of no GPU
    /// never does.
    fn over_cap(&self, gpus: u32) -> bool {
        gpus > 0
            && self
                .max_gpus
                .is_some_and(|cap| self.gpus.saturating_add(gpus) > cap)
    }
}

impl Tenant {
    /// The tenant `id`; one met for the first time gets weight 1 and a slot among the active.
    fn get<'a>(
        tenants: &'a mut IdHashMap<TenantId, Tenant>,
        active: &mut Ranked<(u64, TenantId)>,
        id: TenantId,
    ) -> &'a mut Tenant {
        tenants.entry(id).or_insert_with(|| Tenant {
            weight: 1.0,
            len: 0,
            vt: 0.0,
            key: 0,
            class_clock: 0.0,
            classes: Classes::default(),
            slot: active.slot(),
            gpus: 0,
            max_gpus: None,
        })
    }
}

/// What a placement round has set aside, to restore at its end. `end_round` empties it and
/// keeps its capacity, so the next round sets aside without allocating.
#[derive(Debug, Default)]
pub struct Round {
    /// Shapes no worker can take for the rest of the round, a bit per shape (shape ids are
    /// indices): every step of a round asks, so a bit test, not a hash probe.
    dead: Vec<u64>,
    /// (flow, slot in its heads, the head).
    heads: Vec<(FlowKey, u32, Fifo)>,
    classes: Vec<(TenantId, ClassKey)>,
    /// (slot in `active`, its entry).
    tenants: Vec<(u32, (u64, TenantId))>,
    /// Set aside with the class aging had given them.
    tasks: Vec<(TaskId, PendingTask, u8)>,
}

impl Round {
    /// The word of `dead` a shape's bit is in, and the bit.
    fn bit(shape: ShapeId) -> (usize, u64) {
        let i = usize::try_from(shape).expect("shape ids are vector indices");
        (i / 64, 1 << (i % 64))
    }

    fn is_dead(&self, shape: ShapeId) -> bool {
        let (word, bit) = Round::bit(shape);
        self.dead.get(word).is_some_and(|w| w & bit != 0)
    }
}

#[derive(Debug, Default)]
pub struct PendingQueue {
    fairness: Fairness,
    tasks: IdHashMap<TaskId, (PendingTask, u8)>,
    flows: IdHashMap<FlowKey, Flow>,
    per_shape: IdHashMap<(FlowKey, ShapeId), ShapeQueue>,
    tenants: IdHashMap<TenantId, Tenant>,
    /// Active tenants: (finish tag bits, tenant).
    active: Ranked<(u64, TenantId)>,
    /// Virtual time of the last tenant served, where a newly active tenant starts.
    clock: f64,
    /// (when the task moves up a class, task, the class it moves from): a min-heap with lazy
    /// deletion, cheaper than a search tree on the push/take path; an entry is current only if
    /// the task is still pending in that class with that promotion time.
    aging: BinaryHeap<Reverse<(u64, TaskId, u8)>>,
    by_priority: [u64; PRIORITY_CLASSES],
    /// Pending tasks per affinity key (0 = none is not counted).
    by_affinity: IdHashMap<u64, u64>,
    /// Placed tasks that hold GPUs: (tenant, GPUs), charged to the tenant until `discharge`.
    charged: IdHashMap<TaskId, (TenantId, u32)>,
}

fn promotion_at(fairness: &Fairness, p: &PendingTask, class: u8) -> Option<u64> {
    let aging = fairness.aging_ms;
    if aging == 0 || usize::from(class) + 1 >= PRIORITY_CLASSES {
        return None;
    }
    let steps = u64::from(class - p.priority) + 1;
    Some(p.enqueued_ms.saturating_add(aging.saturating_mul(steps)))
}

/// Virtual times are finite and >= 0, so their bits order like the numbers.
fn bits(vt: f64) -> u64 {
    (vt + 0.0).to_bits()
}

impl PendingQueue {
    pub fn new(fairness: Fairness) -> CoreResult<PendingQueue> {
        fairness.check()?;
        Ok(PendingQueue {
            fairness,
            ..PendingQueue::default()
        })
    }

    /// Check a priority is one of the four classes.
    pub fn check_priority(priority: u8) -> CoreResult<()> {
        if usize::from(priority) >= PRIORITY_CLASSES {
            return Err(invalid(format!(
                "priority must be 0 (LOW) to 3 (URGENT), got {priority}"
            )));
        }
        Ok(())
    }

    /// Set a tenant's share (default 1). Takes effect for work placed from now on.
    pub fn set_tenant_weight(&mut self, tenant: TenantId, weight: f64) -> CoreResult<()> {
        check_weight("tenant weight", weight)?;
        let t = Tenant::get(&mut self.tenants, &mut self.active, tenant);
        let active = self.active.get(t.slot).is_some();
        t.weight = weight;
        t.key = bits(t.vt + 1.0 / weight);
        if active {
            self.active.set(t.slot, Some((t.key, tenant)));
        }
        Ok(())
    }

    /// Cap the GPUs a tenant's placed tasks may hold together (None = no cap). A tenant at its
    /// cap keeps its tasks queued and sits out placement rounds until its tasks free GPUs; the
    /// other tenants go on. Takes effect from the next round; nothing placed is taken back.
    pub fn set_tenant_max_gpus(&mut self, tenant: TenantId, max_gpus: Option<u32>) {
        Tenant::get(&mut self.tenants, &mut self.active, tenant).max_gpus = max_gpus;
    }

    /// (GPUs a tenant's placed tasks hold, its cap).
    pub fn tenant_gpus(&self, tenant: TenantId) -> (u32, Option<u32>) {
        self.tenants
            .get(&tenant)
            .map_or((0, None), |t| (t.gpus, t.max_gpus))
    }

    /// Count `gpus` GPUs of a placed task against `tenant` (a task placed by `take` is counted
    /// there; this is for one placed otherwise, such as re-attached). Once per task.
    pub fn charge(&mut self, task: TaskId, tenant: TenantId, gpus: u32) {
        let t = Tenant::get(&mut self.tenants, &mut self.active, tenant);
        Self::charge_to(&mut self.charged, t, (task, tenant), gpus);
    }

    /// charge() once the tenant is in hand (`take` has it from taking the task out).
    fn charge_to(
        charged: &mut IdHashMap<TaskId, (TenantId, u32)>,
        t: &mut Tenant,
        (task, tenant): (TaskId, TenantId),
        gpus: u32,
    ) {
        if gpus == 0 {
            return;
        }
        // One probe for the check and the insert.
        let Entry::Vacant(entry) = charged.entry(task) else {
            return;
        };
        entry.insert((tenant, gpus));
        t.gpus = t.gpus.saturating_add(gpus);
    }

    /// A placed task no longer holds its GPUs (it ended, was released or lost its worker).
    pub fn discharge(&mut self, task: TaskId) {
        if let Some((tenant, gpus)) = self.charged.remove(&task) {
            if let Some(t) = self.tenants.get_mut(&tenant) {
                t.gpus = t.gpus.saturating_sub(gpus);
            }
        }
    }

    /// Queue a task. The caller has checked the shape exists and the task is not placed.
    pub fn push(&mut self, task: TaskId, pending: PendingTask) -> CoreResult<()> {
        Self::check_priority(pending.priority)?;
        if self.tasks.contains_key(&task) {
            return Err(invalid(format!("task {task} is already pending")));
        }
        self.by_priority[usize::from(pending.priority)] += 1;
        if pending.affinity != 0 {
            *self.by_affinity.entry(pending.affinity).or_default() += 1;
        }
        self.insert(task, pending, pending.priority, false);
        Ok(())
    }

    /// Put a task into its flow at `class`; `restore` keeps virtual times as they were (a task
    /// set aside for a round coming back is not a newly active flow).
    fn insert(&mut self, task: TaskId, p: PendingTask, class: u8, restore: bool) {
        let fk = (p.tenant, class);
        let flow = self.flows.entry(fk).or_default();
        let shape_queue = self.per_shape.entry((fk, p.shape)).or_insert_with(|| {
            let slot = flow.heads.slot();
            let at = slot as usize;
            if flow.shapes.len() <= at {
                flow.shapes.resize(at + 1, 0);
            }
            flow.shapes[at] = p.shape;
            ShapeQueue {
                tasks: BTreeSet::new(),
                locality: Locality::default(),
                slot,
            }
        });
        let queue = &mut shape_queue.tasks;
        let old_head = queue.first().copied();
        queue.insert((p.seq, task));
        let new_head = queue.first().copied();
        if old_head != new_head {
            flow.heads.set(shape_queue.slot, new_head);
        }
        flow.len += 1;
        let tenant = Tenant::get(&mut self.tenants, &mut self.active, p.tenant);
        if flow.len == 1 {
            if !restore {
                flow.vt = flow.vt.max(tenant.class_clock);
            }
            flow.key = self.fairness.class_key(flow.vt, class);
            tenant.classes.insert((flow.key, Reverse(class)));
        }
        tenant.len += 1;
        if tenant.len == 1 {
            if !restore {
                tenant.vt = tenant.vt.max(self.clock);
            }
            tenant.key = bits(tenant.vt + 1.0 / tenant.weight);
            self.active.set(tenant.slot, Some((tenant.key, p.tenant)));
        }
        if let Some(at) = self.promotion_at(&p, class) {
            self.aging.push(Reverse((at, task, class)));
        }
        self.tasks.insert(task, (p, class));
    }

    /// When a task waiting in `class` moves up one, or None at the top (or without aging).
    fn promotion_at(&self, p: &PendingTask, class: u8) -> Option<u64> {
        promotion_at(&self.fairness, p, class)
    }

    /// Take a task out of its flow; the inverse of `insert`.
    fn detach(&mut self, task: TaskId) -> Option<(PendingTask, u8)> {
        self.detach_as(task, None)
    }

    /// detach(), and with `placed` = Some(warm) what a placement does on the way (see `take`),
    /// so each of the task's tables is looked up once.
    fn detach_as(&mut self, task: TaskId, placed: Option<bool>) -> Option<(PendingTask, u8)> {
        let (p, class) = self.tasks.remove(&task)?;
        let fk = (p.tenant, class);
        let shape_queue = self
            .per_shape
            .get_mut(&(fk, p.shape))
            .expect("a pending task's queue exists");
        if let Some(warm) = placed {
            shape_queue.locality.waiting_since = None;
            shape_queue.locality.relaxed &= !warm;
        }
        let queue = &mut shape_queue.tasks;
        let old_head = queue.first().copied();
        if old_head == Some((p.seq, task)) {
            // The usual case, a head being placed: no search.
            queue.pop_first();
        } else {
            queue.remove(&(p.seq, task));
        }
        let new_head = queue.first().copied();
        let head_slot = shape_queue.slot;
        let emptied = queue.is_empty();
        if emptied {
            self.per_shape.remove(&(fk, p.shape));
        }
        let flow = self
            .flows
            .get_mut(&fk)
            .expect("a pending task's flow exists");
        let tenant = self.tenants.get_mut(&p.tenant).expect("flows have tenants");
        if placed.is_some() {
            // Its GPUs count against its tenant's cap until `discharge`.
            Self::charge_to(&mut self.charged, tenant, (task, p.tenant), p.gpus);
            let work = f64::from(p.work.max(1));
            let class_weight = self.fairness.class_weights[usize::from(class)];
            tenant.class_clock = flow.vt;
            let listed = tenant.classes.remove(&(flow.key, Reverse(class)));
            flow.vt += work / class_weight;
            flow.key = self.fairness.class_key(flow.vt, class);
            if listed {
                tenant.classes.insert((flow.key, Reverse(class)));
            }
            self.clock = tenant.vt;
            let listed = self.active.get(tenant.slot).is_some();
            tenant.vt += work / tenant.weight;
            tenant.key = bits(tenant.vt + 1.0 / tenant.weight);
            if listed {
                self.active.set(tenant.slot, Some((tenant.key, p.tenant)));
            }
        }
        if old_head != new_head {
            flow.heads.set(head_slot, new_head);
        }
        if emptied {
            flow.heads.release(head_slot);
        }
        flow.len -= 1;
        if flow.len == 0 {
            tenant.classes.remove(&(flow.key, Reverse(class)));
        }
        tenant.len -= 1;
        if tenant.len == 0 {
            self.active.set(tenant.slot, None);
        }
        Some((p, class))
    }

    /// Drop a pending task; None if it was not pending.
    pub fn remove(&mut self, task: TaskId) -> Option<PendingTask> {
        self.leave(task, None)
    }

    /// Take out the task `next` returned, to place it (`warm`: on a worker where its affinity
    /// key is warm): its work is charged to its tenant and class, its queue's wait clock stops
    /// (and a warm placement makes the queue wait for warm workers again), and it is dropped.
    /// Its GPUs count against its tenant's cap until `discharge`.
    pub fn take(&mut self, task: TaskId, warm: bool) -> Option<PendingTask> {
        self.leave(task, Some(warm))
    }

    fn leave(&mut self, task: TaskId, placed: Option<bool>) -> Option<PendingTask> {
        let (p, _) = self.detach_as(task, placed)?;
        self.by_priority[usize::from(p.priority)] -= 1;
        // Key 0 (none) is never counted: no lookup for it.
        if let Some(n) = (p.affinity != 0)
            .then(|| self.by_affinity.get_mut(&p.affinity))
            .flatten()
        {
            *n -= 1;
            if *n == 0 {
                self.by_affinity.remove(&p.affinity);
            }
        }
        Some(p)
    }

    /// Move every task that has waited long enough up one class (or more, if it waited
    /// several periods). Each task moves at most 3 times in its life: O(log n) amortised.
    pub fn promote(&mut self, now_ms: u64) {
        while let Some(&Reverse((at, task, class))) = self.aging.peek() {
            if at > now_ms {
                break;
            }
            self.aging.pop();
            let current = self
                .tasks
                .get(&task)
                .is_some_and(|&(p, c)| c == class && self.promotion_at(&p, c) == Some(at));
            if current {
                let (p, class) = self.detach(task).expect("checked pending");
                self.insert(task, p, class + 1, false);
            }
        }
        if self.aging.len() > 2 * self.tasks.len() + 1024 {
            // Rebuilt from the pending tasks, one pass over their table and a heapify, rather
            // than filtered entry by entry with a lookup (a cache miss) each.
            let fairness = self.fairness;
            self.aging = self
                .tasks
                .iter()
                .filter_map(|(&task, &(p, class))| {
                    promotion_at(&fairness, &p, class).map(|at| Reverse((at, task, class)))
                })
                .collect();
        }
    }

    /// The best task not set aside in this round, or None when the round has nothing left.
    pub fn next(&mut self, round: &mut Round) -> Option<(TaskId, PendingTask)> {
        loop {
            let (entry, tenant_slot) = self.active.first()?;
            let tenant_id = entry.1;
            let tenant = self
                .tenants
                .get_mut(&tenant_id)
                .expect("active tenants exist");
            let Some(ckey) = tenant.classes.first() else {
                self.active.set(tenant_slot, None);
                round.tenants.push((tenant_slot, entry));
                continue;
            };
            let fk = (tenant_id, ckey.1 .0);
            let flow = self.flows.get_mut(&fk).expect("active flows exist");
            let Some((head, slot)) = flow.heads.first() else {
                tenant.classes.remove(&ckey);
                round.classes.push((tenant_id, ckey));
                continue;
            };
            if round.is_dead(flow.shapes[slot as usize]) {
                flow.heads.set(slot, None);
                round.heads.push((fk, slot, head));
                continue;
            }
            let task = head.1;
            let (p, _) = self.tasks[&task];
            if tenant.over_cap(p.gpus) {
                // At its GPU cap: the tenant sits the round out as a whole (rather than letting
                // a smaller task overtake its head), and the other tenants go on.
                self.active.set(tenant_slot, None);
                round.tenants.push((tenant_slot, entry));
                continue;
            }
            return Some((task, p));
        }
    }

    /// No worker can take this shape for the rest of the round.
    pub fn shape_dead(round: &mut Round, shape: ShapeId) {
        let (word, bit) = Round::bit(shape);
        if round.dead.len() <= word {
            round.dead.resize(word + 1, 0);
        }
        round.dead[word] |= bit;
    }

    fn shape_queue(&mut self, task: TaskId) -> Option<&mut ShapeQueue> {
        let &(p, class) = self.tasks.get(&task)?;
        self.per_shape.get_mut(&((p.tenant, class), p.shape))
    }

    /// The delay scheduling state of a pending task's (flow, shape) queue.
    pub fn locality(&self, task: TaskId) -> Locality {
        self.tasks
            .get(&task)
            .and_then(|&(p, class)| self.per_shape.get(&((p.tenant, class), p.shape)))
            .map(|q| q.locality)
            .unwrap_or_default()
    }

    /// The task `next` just returned waits for a warm worker: its (flow, shape) queue sits out
    /// the rest of the round with it, so FIFO inside the flow holds. Starts the queue's wait
    /// clock if it is not running.
    pub fn hold(&mut self, round: &mut Round, task: TaskId, now_ms: u64) {
        let Some(&(p, class)) = self.tasks.get(&task) else {
            return;
        };
        let Some(q) = self.shape_queue(task) else {
            return;
        };
        q.locality.waiting_since.get_or_insert(now_ms);
        let slot = q.slot;
        let fk = (p.tenant, class);
        let head = (p.seq, task);
        if let Some(flow) = self.flows.get_mut(&fk) {
            if flow.heads.get(slot) == Some(head) {
                flow.heads.set(slot, None);
                round.heads.push((fk, slot, head));
            }
        }
    }

    /// The task's queue waited its locality wait out: its tasks take any worker from now on.
    pub fn relax(&mut self, task: TaskId) {
        if let Some(q) = self.shape_queue(task) {
            q.locality.relaxed = true;
        }
    }

    /// This task cannot be placed this round for a reason of its own: out of the queue until
    /// `end_round`, so the tasks behind it are not held up.
    pub fn set_aside(&mut self, round: &mut Round, task: TaskId) {
        if let Some((p, class)) = self.detach(task) {
            round.tasks.push((task, p, class));
        }
    }

    /// Restore everything the round set aside.
    pub fn end_round(&mut self, round: &mut Round) {
        round.dead.clear();
        for (fk, slot, head) in round.heads.drain(..) {
            if let Some(flow) = self.flows.get_mut(&fk) {
                flow.heads.set(slot, Some(head));
            }
        }
        for (tenant, ckey) in round.classes.drain(..) {
            if let Some(t) = self.tenants.get_mut(&tenant) {
                t.classes.insert(ckey);
            }
        }
        for (slot, entry) in round.tenants.drain(..) {
            self.active.set(slot, Some(entry));
        }
        for (task, p, class) in round.tasks.drain(..) {
            self.insert(task, p, class, true);
        }
    }

    pub fn get(&self, task: TaskId) -> Option<&PendingTask> {
        self.tasks.get(&task).map(|(p, _)| p)
    }

    /// The class a pending task is in now (its priority, raised by aging).
    pub fn class_of(&self, task: TaskId) -> Option<u8> {
        self.tasks.get(&task).map(|&(_, c)| c)
    }

    pub fn contains(&self, task: TaskId) -> bool {
        self.tasks.contains_key(&task)
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Queue depth for LOW, NORMAL, HIGH, URGENT (as submitted).
    pub fn by_priority(&self) -> [u64; PRIORITY_CLASSES] {
        self.by_priority
    }

    /// Pending tasks with this affinity key.
    pub fn with_affinity(&self, key: u64) -> u64 {
        self.by_affinity.get(&key).copied().unwrap_or(0)
    }

    /// Pending tasks submitted in classes strictly above `priority`.
    pub fn queued_above(&self, priority: u8) -> u64 {
        self.by_priority[usize::from(priority) + 1..].iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARES: Fairness = Fairness {
        mode: PriorityMode::Shares,
        class_weights: [1.0, 2.0, 3.0, 4.0],
        aging_ms: 60_000,
    };

    fn task(shape: ShapeId, priority: u8, seq: u64) -> PendingTask {
        PendingTask::basic(shape, priority, seq, 0)
    }

    /// Place one task at a time, as a single busy slot frees: the order they are served in.
    fn one_by_one(q: &mut PendingQueue) -> Vec<TaskId> {
        let mut out = Vec::new();
        loop {
            let mut round = Round::default();
            let next = q.next(&mut round).map(|(t, _)| t);
            if let Some(t) = next {
                q.take(t, false);
                out.push(t);
            }
            q.end_round(&mut round);
            if next.is_none() {
                return out;
            }
        }
    }

    /// One NORMAL task placed (the busy slot), then LOW, NORMAL, HIGH, URGENT, NORMAL queued.
    fn busy_slot_then_five(fairness: Fairness) -> Vec<u8> {
        let mut q = PendingQueue::new(fairness).unwrap();
        q.push(0, task(0, 1, 0)).unwrap();
        assert_eq!(one_by_one(&mut q), vec![0]);
        for (t, class) in [(1, 0), (2, 1), (3, 2), (4, 3), (5, 1)] {
            q.push(t, task(0, class, t)).unwrap();
        }
        let classes = [0, 0, 1, 2, 3, 1];
        one_by_one(&mut q)
            .into_iter()
            .map(|t| classes[t as usize])
            .collect()
    }

    #[test]
    fn strict_priority_skips_ahead_and_is_fifo_inside_a_class() {
        assert_eq!(
            busy_slot_then_five(Fairness::default()),
            vec![3, 2, 1, 1, 0],
            "URGENT, HIGH, NORMAL, NORMAL, LOW"
        );
        // With shares, LOW gets its turn between the two NORMAL tasks.
        assert_eq!(busy_slot_then_five(SHARES), vec![3, 2, 1, 0, 1]);
    }

    #[test]
    fn strict_priority_lets_a_lower_class_use_what_the_higher_cannot() {
        let mut q = PendingQueue::default();
        q.push(1, task(7, 3, 1)).unwrap();
        q.push(2, task(8, 0, 2)).unwrap();
        q.push(3, task(7, 2, 3)).unwrap();
        let mut round = Round::default();
        assert_eq!(q.next(&mut round).map(|x| x.0), Some(1));
        // No worker can take shape 7 this round: the LOW task of shape 8 goes, HIGH 3 waits.
        PendingQueue::shape_dead(&mut round, 7);
        assert_eq!(q.next(&mut round).map(|x| x.0), Some(2));
        q.take(2, false);
        assert_eq!(q.next(&mut round), None);
        q.end_round(&mut round);
        assert_eq!(order(&mut q), vec![1, 3]);
    }

    #[test]
    fn strict_priority_keeps_tenants_sharing_by_weight() {
        let mut q = PendingQueue::default();
        q.set_tenant_weight(1, 3.0).unwrap();
        // Tenant 1 has only LOW work, tenant 2 only URGENT: priority does not cross tenants.
        for i in 0..40 {
            let (tenant, class) = if i % 2 == 0 { (1, 0) } else { (2, 3) };
            let mut p = task(0, class, i);
            p.tenant = tenant;
            q.push(i, p).unwrap();
        }
        let first: Vec<_> = order(&mut q).into_iter().take(20).collect();
        let heavy = first.iter().filter(|&&t| t % 2 == 0).count();
        assert_eq!(heavy, 15, "3:1 weights give 15 of 20: {first:?}");
    }

    #[test]
    fn strict_priority_ages_a_low_task_past_newer_work() {
        let mut q = PendingQueue::new(Fairness {
            aging_ms: 100,
            ..Fairness::default()
        })
        .unwrap();
        q.push(1, task(0, 0, 1)).unwrap();
        let mut high = task(0, 2, 2);
        high.enqueued_ms = 150;
        q.push(2, high).unwrap();
        // After two periods the LOW task is HIGH too, and older: FIFO puts it first.
        q.promote(200);
        assert_eq!(q.class_of(1), Some(2));
        assert_eq!(order(&mut q), vec![1, 2]);
    }

    /// Drain the queue through rounds (no dead shapes): the order tasks would be placed in.
    fn order(q: &mut PendingQueue) -> Vec<TaskId> {
        let mut out = Vec::new();
        let mut round = Round::default();
        while let Some((t, _)) = q.next(&mut round) {
            q.take(t, false);
            out.push(t);
        }
        q.end_round(&mut round);
        out
    }

    #[test]
    fn classes_share_by_weight_and_are_fifo_inside() {
        let mut q = PendingQueue::new(SHARES).unwrap();
        // 8 of each class, pushed LOW first.
        let mut id = 0;
        for class in 0..4u8 {
            for i in 0..8 {
                q.push(id, task(0, class, i)).unwrap();
                id += 1;
            }
        }
        let placed = order(&mut q);
        let class_of = |t: TaskId| (t / 8) as usize;
        // Over the first 10 placements the shares are 4:3:2:1.
        let mut counts = [0; 4];
        for &t in &placed[..10] {
            counts[class_of(t)] += 1;
        }
        assert_eq!(
            counts,
            [1, 2, 3, 4],
            "first 10 placements by class: {placed:?}"
        );
        assert_eq!(placed[0], 24, "URGENT first on a tie");
        for class in 0..4 {
            let seen: Vec<_> = placed.iter().filter(|&&t| class_of(t) == class).collect();
            assert!(seen.windows(2).all(|w| w[0] < w[1]), "FIFO inside a class");
        }
        assert!(q.is_empty());
    }

    #[test]
    fn tenants_share_by_weight_and_idle_time_earns_no_credit() {
        let mut q = PendingQueue::new(Fairness::default()).unwrap();
        q.set_tenant_weight(1, 3.0).unwrap();
        for i in 0..40 {
            let mut p = task(0, 1, i);
            p.tenant = if i % 2 == 0 { 1 } else { 2 };
            q.push(i, p).unwrap();
        }
        let first: Vec<_> = order(&mut q).into_iter().take(20).collect();
        let heavy = first.iter().filter(|&&t| t % 2 == 0).count();
        assert_eq!(heavy, 15, "3:1 weights give 15 of 20: {first:?}");
        // Tenant 3 arrives late: it starts at the current virtual time, it does not get
        // everything until it has caught up with the others.
        for i in 100..110 {
            let mut p = task(0, 1, i);
            p.tenant = 2;
            q.push(i, p).unwrap();
        }
        for i in 200..210 {
            let mut p = task(0, 1, i);
            p.tenant = 3;
            q.push(i, p).unwrap();
        }
        let next: Vec<_> = order(&mut q).into_iter().take(10).collect();
        let late = next.iter().filter(|&&t| t >= 200).count();
        assert!(
            (4..=6).contains(&late),
            "equal shares after arriving: {next:?}"
        );
    }

    #[test]
    fn aging_promotes_one_class_per_period() {
        let mut q = PendingQueue::new(Fairness {
            class_weights: [1e-6, 1.0, 1.0, 1.0],
            aging_ms: 100,
            ..SHARES
        })
        .unwrap();
        let mut low = task(0, 0, 0);
        low.enqueued_ms = 0;
        q.push(1, low).unwrap();
        q.promote(99);
        assert_eq!(q.class_of(1), Some(0));
        q.promote(100);
        assert_eq!(q.class_of(1), Some(1));
        q.promote(1000);
        assert_eq!(q.class_of(1), Some(3), "at most URGENT");
        assert_eq!(q.by_priority(), [1, 0, 0, 0], "counted as submitted");
        assert_eq!(q.remove(1).map(|p| p.priority), Some(0));
        assert!(q.is_empty());
    }

    #[test]
    fn aging_outlives_dropping_the_entries_of_removed_tasks() {
        let mut q = PendingQueue::new(Fairness {
            aging_ms: 100,
            ..Fairness::default()
        })
        .unwrap();
        for t in 0..3000 {
            q.push(t, task(0, 0, t)).unwrap();
        }
        for t in 10..3000 {
            q.remove(t);
        }
        q.promote(50);
        assert_eq!(
            q.aging.len(),
            10,
            "stale entries dropped, current ones kept"
        );
        q.promote(100);
        assert!((0..10).all(|t| q.class_of(t) == Some(1)));
        q.promote(200);
        assert!((0..10).all(|t| q.class_of(t) == Some(2)));
    }

    #[test]
    fn dead_shapes_and_set_aside_tasks_are_restored_after_the_round() {
        let mut q = PendingQueue::new(Fairness::default()).unwrap();
        q.push(1, task(7, 3, 1)).unwrap();
        q.push(2, task(8, 1, 2)).unwrap();
        q.push(3, task(8, 1, 3)).unwrap();
        let mut round = Round::default();
        assert_eq!(q.next(&mut round).map(|x| x.0), Some(1));
        PendingQueue::shape_dead(&mut round, 7);
        assert_eq!(q.next(&mut round).map(|x| x.0), Some(2));
        q.set_aside(&mut round, 2);
        assert_eq!(q.next(&mut round).map(|x| x.0), Some(3));
        q.take(3, false);
        assert_eq!(q.next(&mut round), None);
        q.end_round(&mut round);
        assert_eq!(q.len(), 2);
        assert_eq!(q.by_priority(), [0, 1, 0, 1]);
        assert_eq!(order(&mut q), vec![1, 2]);
    }

    #[test]
    fn duplicates_and_bad_priorities_are_refused() {
        let mut q = PendingQueue::default();
        q.push(1, task(0, 1, 1)).unwrap();
        assert!(q.push(1, task(0, 2, 2)).is_err());
        assert!(q.push(2, task(0, 4, 2)).is_err());
        assert_eq!(q.len(), 1);
        assert!(PendingQueue::new(Fairness {
            class_weights: [0.0, 1.0, 1.0, 1.0],
            aging_ms: 0,
            mode: PriorityMode::Strict,
        })
        .is_err());
        assert!(q.set_tenant_weight(1, f64::NAN).is_err());
    }
}
