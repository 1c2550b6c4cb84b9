//! The head of a lineage's table and the state machine of its two banks.
//!
//! The head says which configuration (by digest) each bank holds, under
//! which generation, and whether it is empty, being written (by which
//! writer, last renewed when) or ready. A writer moves its bank through
//! three transitions, each a compare-and-swap on the head through
//! [`store::update`]: [`claim`] (or find the table ready, or being written
//! by a live writer), [`Claim::renew`] (the heartbeat), and
//! [`Claim::complete`].

use super::{Digest, Publication, TableRef, STALE_CLAIM_NS};
use crate::store::cursor::{Reader, Writer};
use crate::store::names::{head_key, Lineage};
use crate::store::{self, Change, SharedStore, StoreError};

/// 2: claims carry the time their writer last renewed them.
const HEAD_VERSION: u8 = 2;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum BankState {
    #[default]
    Empty,
    /// Claimed by the writer that claimed it at `started_ns` (which tells
    /// two writers of the same table apart), last renewed at `renewed_ns`.
    Writing {
        started_ns: u64,
        renewed_ns: u64,
    },
    Ready,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Bank {
    pub(super) digest: Digest,
    pub(super) generation: u64,
    pub(super) state: BankState,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Head {
    pub(super) next_generation: u64,
    pub(super) banks: [Bank; 2],
}

/// What a worker publishing a digest does, from the head it read.
enum Step {
    /// The table is complete in bank `index`.
    Ready { index: usize, generation: u64 },
    /// A live writer is writing it.
    Pending,
    /// The head now holds this worker's claim on bank `index`.
    Claimed { index: usize, generation: u64 },
}

impl Head {
    pub(super) fn decode(bytes: &[u8]) -> Option<Self> {
        let mut reader = Reader::new(bytes);
        if reader.u8()? != HEAD_VERSION {
            return None;
        }
        let next_generation = reader.u64()?;
        let mut banks = [Bank::default(); 2];
        for bank in &mut banks {
            bank.digest = reader.array()?;
            bank.generation = reader.u64()?;
            let state = reader.u8()?;
            let started_ns = reader.u64()?;
            let renewed_ns = reader.u64()?;
            bank.state = match state {
                0 => BankState::Empty,
                1 => BankState::Writing {
                    started_ns,
                    renewed_ns,
                },
                2 => BankState::Ready,
                _ => return None,
            };
        }
        reader.is_empty().then_some(Self {
            next_generation,
            banks,
        })
    }

    /// The head in `current`, the entry as read. An unreadable head
    /// (another format) is treated as empty and overwritten. The records
    /// it described stay in the banks, but the generation floor of
    /// `publish` keeps them from ever matching a new table.
    fn read(current: Option<&[u8]>) -> Self {
        current.and_then(Self::decode).unwrap_or_default()
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Writer::with_capacity(1 + 8 + 2 * 57);
        out.u8(HEAD_VERSION).u64(self.next_generation);
        for bank in &self.banks {
            let (state, started_ns, renewed_ns) = match bank.state {
                BankState::Empty => (0, 0, 0),
                BankState::Writing {
                    started_ns,
                    renewed_ns,
                } => (1, started_ns, renewed_ns),
                BankState::Ready => (2, 0, 0),
            };
            out.bytes(&bank.digest)
                .u64(bank.generation)
                .u8(state)
                .u64(started_ns)
                .u64(renewed_ns);
        }
        out.finish()
    }

    /// The bank to overwrite for a new table: one being written for another
    /// configuration (it is superseded), else the older of the two, so the
    /// newest complete table keeps serving workers that have not switched.
    fn bank_to_claim(&self) -> usize {
        let [first, second] = &self.banks;
        match (first.state, second.state) {
            (BankState::Writing { .. }, _) => 0,
            (_, BankState::Writing { .. }) => 1,
            _ if first.generation <= second.generation => 0,
            _ => 1,
        }
    }

    /// The bank holding `digest`'s complete table, with its generation.
    fn ready_bank(&self, digest: &Digest) -> Option<(usize, u64)> {
        self.banks
            .iter()
            .enumerate()
            .find(|(_, bank)| bank.digest == *digest && bank.state == BankState::Ready)
            .map(|(index, bank)| (index, bank.generation))
    }

    /// What a worker publishing `digest` at `now` does, claiming a bank in
    /// this head when it must write the table.
    ///
    /// A new table's generation is at least `now`, and above the head's
    /// count (see `publish` for why generations are never reused). An
    /// abandoned claim is continued under its own generation: every record
    /// of that generation in that bank is this configuration's, so
    /// whatever its first writer still writes, should it be alive after
    /// all, is what the new writer writes too.
    fn step(&mut self, digest: &Digest, now: u64) -> Step {
        let mut abandoned = None;
        for (index, bank) in self.banks.iter().enumerate() {
            if bank.digest != *digest {
                continue;
            }
            match bank.state {
                BankState::Ready => {
                    return Step::Ready {
                        index,
                        generation: bank.generation,
                    }
                }
                BankState::Writing { renewed_ns, .. }
                    if now.saturating_sub(renewed_ns) < STALE_CLAIM_NS =>
                {
                    return Step::Pending
                }
                BankState::Writing { .. } => abandoned = Some((index, bank.generation)),
                BankState::Empty => {}
            }
        }
        let (index, generation) = abandoned.unwrap_or_else(|| {
            let generation = self.next_generation.max(now).max(1);
            self.next_generation = generation.saturating_add(1);
            (self.bank_to_claim(), generation)
        });
        if let Some(bank) = self.banks.get_mut(index) {
            *bank = Bank {
                digest: *digest,
                generation,
                state: BankState::Writing {
                    started_ns: now,
                    renewed_ns: now,
                },
            };
        }
        Step::Claimed { index, generation }
    }
}

/// The head of `lineage` as stored (empty when absent or unreadable).
pub(super) fn read_head(store: &dyn SharedStore, lineage: &Lineage) -> Result<Head, StoreError> {
    let current = store.get(&head_key(lineage))?;
    Ok(Head::read(
        current.as_ref().map(|(bytes, _)| bytes.as_slice()),
    ))
}

/// The complete table of `digest` in `lineage`'s head, if there is one.
pub(super) fn ready_in(
    store: &dyn SharedStore,
    lineage: &Lineage,
    digest: &Digest,
) -> Result<Option<TableRef>, StoreError> {
    let head = read_head(store, lineage)?;
    Ok(head
        .ready_bank(digest)
        .map(|(index, generation)| table_ref(lineage, index, generation)))
}

pub(super) fn table_ref(lineage: &Lineage, index: usize, generation: u64) -> TableRef {
    TableRef {
        lineage: *lineage,
        bank: u8::from(index != 0),
        generation,
        shard_bits: None,
    }
}

/// A writer's hold on one bank of one lineage's head.
#[derive(Clone, Copy, Debug)]
pub(super) struct Claim<'a> {
    pub(super) lineage: &'a Lineage,
    index: usize,
    digest: Digest,
    pub(super) generation: u64,
    /// When this writer claimed the bank: its identity among the writers
    /// of the same table (a takeover keeps digest and generation).
    started_ns: u64,
    /// No head existed before this claim: the lineage never had a table.
    pub(super) first_table: bool,
}

/// The outcome of [`claim`].
pub(super) enum Claimed<'a> {
    /// Nothing to write: the table is ready, or another writer holds it.
    Found(Publication),
    /// This worker holds the bank and writes the table.
    Held(Claim<'a>),
}

/// Claims a bank of `lineage`'s head to write `digest`'s table, unless the
/// table is complete or a live writer holds it. `now_ns` is read on every
/// attempt, so a retried claim carries the time it was made.
pub(super) fn claim<'a>(
    store: &dyn SharedStore,
    lineage: &'a Lineage,
    digest: &Digest,
    now_ns: &dyn Fn() -> u64,
) -> Result<Claimed<'a>, StoreError> {
    let updated = store::update(store, &head_key(lineage), |current| {
        let now = now_ns();
        let mut head = Head::read(current);
        match head.step(digest, now) {
            Step::Ready { index, generation } => Change::Keep(Claimed::Found(Publication::Ready(
                table_ref(lineage, index, generation),
            ))),
            Step::Pending => Change::Keep(Claimed::Found(Publication::Pending)),
            Step::Claimed { index, generation } => Change::Write(
                head.encode(),
                Claimed::Held(Claim {
                    lineage,
                    index,
                    digest: *digest,
                    generation,
                    started_ns: now,
                    first_table: current.is_none(),
                }),
            ),
        }
    })?;
    Ok(updated.value)
}

impl Claim<'_> {
    /// Where the claimed table's records go.
    pub(super) fn table(&self) -> TableRef {
        table_ref(self.lineage, self.index, self.generation)
    }

    fn is_held_in(&self, bank: &Bank) -> bool {
        bank.digest == self.digest
            && bank.generation == self.generation
            && matches!(bank.state, BankState::Writing { started_ns, .. } if started_ns == self.started_ns)
    }

    /// Renews the claim in the head with the time `now_ns` (the heartbeat
    /// that keeps waiting workers from taking it over); `false` when it
    /// was taken over or superseded meanwhile.
    pub(super) fn renew(&self, store: &dyn SharedStore, now_ns: u64) -> Result<bool, StoreError> {
        let updated = store::update(store, &head_key(self.lineage), |current| {
            let mut head = Head::read(current);
            let Some(bank) = head.banks.get_mut(self.index) else {
                return Change::Keep(false);
            };
            if !self.is_held_in(bank) {
                return Change::Keep(false);
            }
            bank.state = BankState::Writing {
                started_ns: self.started_ns,
                renewed_ns: now_ns,
            };
            Change::Write(head.encode(), true)
        })?;
        Ok(updated.value)
    }

    /// Marks the claimed bank complete. `Pending` when the claim was lost;
    /// `Ready` when it was lost to a writer that completed the same table.
    pub(super) fn complete(&self, store: &dyn SharedStore) -> Result<Publication, StoreError> {
        let updated = store::update(store, &head_key(self.lineage), |current| {
            let mut head = Head::read(current);
            let Some(bank) = head.banks.get_mut(self.index) else {
                return Change::Keep(Publication::Pending);
            };
            if !self.is_held_in(bank) {
                let completed = bank.digest == self.digest
                    && bank.generation == self.generation
                    && bank.state == BankState::Ready;
                return Change::Keep(if completed {
                    Publication::Ready(self.table())
                } else {
                    Publication::Pending
                });
            }
            bank.state = BankState::Ready;
            Change::Write(head.encode(), Publication::Written(self.table()))
        })?;
        Ok(updated.value)
    }
}
