//! The entity index's stored forms: postings items, run heads, and a
//! portal's run list.
//!
//! A *posting* says that sealed event `seq` is about `entity`, with its
//! `ts` and a tag of its name (so that a dedup check compares candidates
//! without reading them). A *run* holds the postings of a range of sealed
//! blocks in entity order — entity length, entity bytes, then seq, the
//! order of the item keys (`keys::run_item_key`) — split into items of
//! about [`ITEM_BYTES`], each stored under its first posting. An entity's
//! postings in a run are then one range read: the last item keyed at or
//! before the entity, and any after it that start with it.
//!
//! Item: `base seq · base ts` (the item's lowest, varints), then groups:
//! `entity len u8 · entity · count` and per posting `seq` (from the base,
//! then from the previous one), `ts` (from the base, then zigzag from the
//! previous one), all varints, and `tag u16 LE`.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use super::filter::{entity_hash, event_hash, Filter, ENTITY_BITS, EVENT_BITS};
use super::CodecError;

/// About how many bytes of postings one item holds: small enough that a
/// lookup reads little beyond what it needs, large enough that sled's cost
/// per item (several hundred bytes on disk) is small beside it.
pub const ITEM_BYTES: usize = 2048;

/// One posting: sealed event `seq` is about `entity`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    /// The entity id.
    pub entity: String,
    /// The event's seq.
    pub seq: u64,
    /// The event's `ts`.
    pub ts: u64,
    /// `name_tag` of the event's name.
    pub tag: u16,
}

/// The order of entity ids in runs and in item keys: by length, then by
/// bytes.
pub fn entity_order(a: &[u8], b: &[u8]) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// The order of postings in a run.
pub fn posting_order(a: &Posting, b: &Posting) -> Ordering {
    entity_order(a.entity.as_bytes(), b.entity.as_bytes()).then(a.seq.cmp(&b.seq))
}

/// One stored item of a run: its key's first posting and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Entity of the first posting.
    pub entity: String,
    /// Seq of the first posting.
    pub seq: u64,
    /// The encoded postings.
    pub bytes: Vec<u8>,
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(b: &mut &[u8]) -> Result<u64, CodecError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b
            .split_first()
            .ok_or(CodecError::Postings("item ends in a number"))?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(v);
        }
    }
    Err(CodecError::Postings("number too long"))
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Upper bound of the bytes one posting adds to an item (outside its
/// group header): two varints and the tag.
const POSTING_MAX: usize = 10 + 10 + 2;

/// Splits postings (in [`posting_order`]) into items of about
/// [`ITEM_BYTES`]; an entity's postings may continue in the next item.
pub fn encode_items(postings: &[Posting]) -> Vec<Item> {
    let mut items = Vec::new();
    let mut start = 0;
    while start < postings.len() {
        // Take postings while the worst-case size stays under the target
        // (always at least one).
        let mut size = 0;
        let mut end = start;
        while end < postings.len() {
            let new_group = end == start || postings[end].entity != postings[end - 1].entity;
            let add = POSTING_MAX / 2
                + if new_group {
                    2 + postings[end].entity.len()
                } else {
                    0
                };
            if end > start && size + add > ITEM_BYTES {
                break;
            }
            size += add;
            end += 1;
        }
        items.push(encode_item(&postings[start..end]));
        start = end;
    }
    items
}

/// Encodes postings (in [`posting_order`], at least one) as one item.
fn encode_item(postings: &[Posting]) -> Item {
    let base_seq = postings.iter().map(|p| p.seq).min().unwrap_or(0);
    let base_ts = postings.iter().map(|p| p.ts).min().unwrap_or(0);
    let mut out = Vec::with_capacity(postings.len() * 8 + 16);
    push_varint(&mut out, base_seq);
    push_varint(&mut out, base_ts);
    let mut at = 0;
    while at < postings.len() {
        let entity = &postings[at].entity;
        let count = postings[at..]
            .iter()
            .take_while(|p| p.entity == *entity)
            .count();
        // Entity ids are at most 200 bytes (types::EntityId).
        out.push(u8::try_from(entity.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(entity.as_bytes());
        push_varint(&mut out, count as u64);
        let mut prev: Option<&Posting> = None;
        for p in &postings[at..at + count] {
            match prev {
                None => {
                    push_varint(&mut out, p.seq - base_seq);
                    push_varint(&mut out, p.ts - base_ts);
                }
                Some(q) => {
                    push_varint(&mut out, p.seq - q.seq);
                    push_varint(&mut out, zigzag(p.ts.wrapping_sub(q.ts) as i64));
                }
            }
            out.extend_from_slice(&p.tag.to_le_bytes());
            prev = Some(p);
        }
        at += count;
    }
    Item {
        entity: postings[0].entity.clone(),
        seq: postings[0].seq,
        bytes: out,
    }
}

/// Walks an item's groups, handing each group's entity and its postings'
/// `(seq, ts, tag)` to `visit`; stops early when `visit` says so.
fn walk(
    mut b: &[u8],
    mut visit: impl FnMut(&[u8], &mut dyn Iterator<Item = (u64, u64, u16)>) -> bool,
) -> Result<(), CodecError> {
    let base_seq = take_varint(&mut b)?;
    let base_ts = take_varint(&mut b)?;
    let mut postings = Vec::new();
    while let Some((&len, rest)) = b.split_first() {
        b = rest;
        let entity = b
            .get(..len as usize)
            .ok_or(CodecError::Postings("item ends in an entity"))?;
        b = &b[len as usize..];
        let count = take_varint(&mut b)?;
        postings.clear();
        let mut prev: Option<(u64, u64)> = None;
        for _ in 0..count {
            let ds = take_varint(&mut b)?;
            let dt = take_varint(&mut b)?;
            let (seq, ts) = match prev {
                None => (base_seq.checked_add(ds), base_ts.checked_add(dt)),
                // Seqs strictly increase within an entity's group.
                Some((ps, pt)) => (
                    ps.checked_add(ds).filter(|_| ds > 0),
                    pt.checked_add_signed(unzigzag(dt)),
                ),
            };
            let (Some(seq), Some(ts)) = (seq, ts) else {
                return Err(CodecError::Postings("posting out of range"));
            };
            let tag = b
                .get(..2)
                .ok_or(CodecError::Postings("item ends in a tag"))?;
            let tag = u16::from_le_bytes([tag[0], tag[1]]);
            b = &b[2..];
            postings.push((seq, ts, tag));
            prev = Some((seq, ts));
        }
        if !visit(entity, &mut postings.iter().copied()) {
            break;
        }
    }
    Ok(())
}

/// Every posting of an item, in order.
pub fn decode_item(bytes: &[u8]) -> Result<Vec<Posting>, CodecError> {
    let mut out = Vec::new();
    let mut bad = None;
    walk(bytes, |entity, postings| {
        let Ok(entity) = std::str::from_utf8(entity) else {
            bad = Some(CodecError::Postings("entity is not UTF-8"));
            return false;
        };
        out.extend(postings.map(|(seq, ts, tag)| Posting {
            entity: entity.to_owned(),
            seq,
            ts,
            tag,
        }));
        true
    })?;
    match bad {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// The `(seq, ts, tag)` of `entity`'s postings in an item, in seq order.
pub fn find_in_item(bytes: &[u8], entity: &[u8]) -> Result<Vec<(u64, u64, u16)>, CodecError> {
    let mut out = Vec::new();
    walk(bytes, |e, postings| match entity_order(e, entity) {
        Ordering::Less => true,
        Ordering::Equal => {
            out.extend(postings);
            true
        }
        Ordering::Greater => false,
    })?;
    Ok(out)
}

/// What a run is, without its postings: its level in the merge policy,
/// how many postings and which seqs it covers, and its filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunHead {
    /// 0 for the run of one sealed block; a merge of runs of level `l`
    /// makes one of level `l + 1`.
    pub level: u8,
    /// Postings in the run.
    pub postings: u64,
    /// Lowest and highest seq of the blocks the run covers.
    pub lo: u64,
    /// See `lo`.
    pub hi: u64,
    /// Holds [`entity_hash`] of every entity in the run.
    pub entities: Filter,
    /// Holds [`event_hash`] of every posting.
    pub events: Filter,
    /// Where each item starts (its key), in run order, so that a lookup
    /// reads its items by key. `None` in heads written before heads listed
    /// their items: such a run's items are found by a range read.
    pub items: Option<Vec<ItemStart>>,
}

/// The first posting of an item, which keys it: entity and seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemStart {
    /// Entity of the first posting.
    pub entity: Box<str>,
    /// Seq of the first posting.
    pub seq: u64,
}

/// The items of a run that may hold `entity`'s postings, as indexes into
/// `items` (the run's item starts, in run order), ascending: those that
/// start with `entity`, and the last one before them, whose tail may hold
/// its first postings.
pub fn items_of(items: &[ItemStart], entity: &[u8]) -> std::ops::Range<usize> {
    let end = items.partition_point(|i| entity_order(i.entity.as_bytes(), entity).is_le());
    let mut start = end;
    while start > 0 {
        start -= 1;
        if entity_order(items[start].entity.as_bytes(), entity).is_lt() {
            break;
        }
    }
    start..end
}

impl RunHead {
    /// The head of a run of `postings` at `level` covering `lo..=hi`,
    /// stored as `items`.
    pub fn of(level: u8, lo: u64, hi: u64, postings: &[Posting], items: &[Item]) -> RunHead {
        let distinct = postings
            .windows(2)
            .filter(|w| w[0].entity != w[1].entity)
            .count()
            + usize::from(!postings.is_empty());
        let mut entities = Filter::with_keys(distinct, ENTITY_BITS);
        let mut events = Filter::with_keys(postings.len(), EVENT_BITS);
        for p in postings {
            entities.insert(entity_hash(p.entity.as_bytes()));
            events.insert(event_hash(p.entity.as_bytes(), p.ts, p.tag));
        }
        RunHead {
            level,
            postings: postings.len() as u64,
            lo,
            hi,
            entities,
            events,
            items: Some(
                items
                    .iter()
                    .map(|i| ItemStart {
                        entity: i.entity.as_str().into(),
                        seq: i.seq,
                    })
                    .collect(),
            ),
        }
    }

    /// The stored form: the fields of the first heads, then the item
    /// starts, which readers of the first form ignore (postcard reads a
    /// value from the front of its bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let items: Option<Vec<(&str, u64)>> = self
            .items
            .as_ref()
            .map(|items| items.iter().map(|i| (&*i.entity, i.seq)).collect());
        let mut out = postcard::to_stdvec(&(
            self.level,
            self.postings,
            self.lo,
            self.hi,
            self.entities.to_bytes(),
            self.events.to_bytes(),
        ))
        // Cannot fail: integers and byte strings serialise into a Vec.
        .expect("run head serialises");
        if let Some(items) = items {
            // Cannot fail, as above.
            out.extend(postcard::to_stdvec(&items).expect("item starts serialise"));
        }
        out
    }

    /// Reads the stored form (with or without the item starts).
    pub fn from_bytes(bytes: &[u8]) -> Result<RunHead, CodecError> {
        type First<'a> = (u8, u64, u64, u64, &'a [u8], &'a [u8]);
        let ((level, postings, lo, hi, entities, events), rest): (First, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(CodecError::Run)?;
        let items = if rest.is_empty() {
            None
        } else {
            let items: Vec<(&str, u64)> = postcard::from_bytes(rest).map_err(CodecError::Run)?;
            Some(
                items
                    .into_iter()
                    .map(|(entity, seq)| ItemStart {
                        entity: entity.into(),
                        seq,
                    })
                    .collect(),
            )
        };
        Ok(RunHead {
            level,
            postings,
            lo,
            hi,
            entities: Filter::from_bytes(entities)?,
            events: Filter::from_bytes(events)?,
            items,
        })
    }
}

/// A portal's runs: the live ones (oldest first) and those merged away but
/// not yet deleted, with a version that changes with every change, and the
/// number the next run gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunList {
    /// Bumped by every change of the list.
    pub version: u64,
    /// The next run's number (numbers are never reused).
    pub next: u32,
    /// Live runs, oldest first.
    pub live: Vec<u32>,
    /// Runs no longer live whose items and heads still wait to be deleted.
    pub dead: Vec<u32>,
}

impl RunList {
    /// The stored form.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Cannot fail: integers serialise into a Vec.
        postcard::to_stdvec(self).expect("run list serialises")
    }

    /// Reads the stored form.
    pub fn from_bytes(bytes: &[u8]) -> Result<RunList, CodecError> {
        postcard::from_bytes(bytes).map_err(CodecError::Run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn posting(entity: &str, seq: u64, ts: u64) -> Posting {
        Posting {
            entity: entity.into(),
            seq,
            ts,
            tag: (seq % 7) as u16,
        }
    }

    #[test]
    fn items_round_trip_in_key_order_and_split_by_size() {
        let mut postings: Vec<Posting> = (0..3_000u64)
            .map(|i| posting(&(i % 700).to_string(), 100 + i, 1_700_000_000 + i * 3 % 50))
            .collect();
        postings.sort_by(posting_order);
        let items = encode_items(&postings);
        assert!(items.len() > 5, "{} items", items.len());
        let mut back = Vec::new();
        for item in &items {
            assert!(item.bytes.len() <= ITEM_BYTES + 64, "{}", item.bytes.len());
            let decoded = decode_item(&item.bytes).unwrap();
            assert_eq!(
                (decoded[0].entity.as_str(), decoded[0].seq),
                (item.entity.as_str(), item.seq)
            );
            back.extend(decoded);
        }
        assert_eq!(back, postings);
        // "9" sorts before "10", as its key does.
        assert_eq!(entity_order(b"9", b"10"), Ordering::Less);
        // An entity found in every item that holds it.
        let want: Vec<(u64, u64, u16)> = postings
            .iter()
            .filter(|p| p.entity == "42")
            .map(|p| (p.seq, p.ts, p.tag))
            .collect();
        let found: Vec<(u64, u64, u16)> = items
            .iter()
            .flat_map(|i| find_in_item(&i.bytes, b"42").unwrap())
            .collect();
        assert_eq!(found, want);
        assert!(decode_item(&items[0].bytes[..items[0].bytes.len() - 1]).is_err());
        // The items a head's starts point a lookup to hold every posting
        // of the entity, for entities inside, between and around the run's.
        let head = RunHead::of(1, 100, 3_099, &postings, &items);
        let starts = head.items.as_deref().unwrap();
        for entity in ["0", "42", "99", "100", "699", "7000", "", "41a"] {
            let want: Vec<(u64, u64, u16)> = postings
                .iter()
                .filter(|p| p.entity == entity)
                .map(|p| (p.seq, p.ts, p.tag))
                .collect();
            let read = items_of(starts, entity.as_bytes());
            assert!(read.len() <= 3, "{entity}: {read:?}");
            let found: Vec<(u64, u64, u16)> = items[read]
                .iter()
                .flat_map(|i| find_in_item(&i.bytes, entity.as_bytes()).unwrap())
                .collect();
            assert_eq!(found, want, "{entity}");
        }
    }

    #[test]
    fn timestamps_may_go_backwards_within_an_entity() {
        let postings = vec![
            posting("a", 5, 100),
            posting("a", 9, 40),
            posting("a", 12, 400),
        ];
        let items = encode_items(&postings);
        assert_eq!(decode_item(&items[0].bytes).unwrap(), postings);
    }

    #[test]
    fn heads_and_lists_round_trip_and_filters_hold_their_postings() {
        let postings = vec![
            posting("7", 3, 10),
            posting("7", 4, 11),
            posting("8", 5, 12),
        ];
        let items = encode_items(&postings);
        let head = RunHead::of(2, 1, 64, &postings, &items);
        let bytes = head.to_bytes();
        assert_eq!(RunHead::from_bytes(&bytes).unwrap(), head);
        // A head of the first form (no item starts) reads as such, and a
        // reader of the first form reads the fields it knows from a head
        // that has them.
        let first = RunHead {
            items: None,
            ..head.clone()
        };
        assert_eq!(RunHead::from_bytes(&first.to_bytes()).unwrap(), first);
        assert!(first.to_bytes().len() < bytes.len());
        let old: (u8, u64, u64, u64, &[u8], &[u8]) = postcard::from_bytes(&bytes).unwrap();
        assert_eq!((old.0, old.1, old.2, old.3), (2, 3, 1, 64));
        assert!(head.entities.may_contain(entity_hash(b"8")));
        assert!(head.events.may_contain(event_hash(b"7", 11, 4)));
        let list = RunList {
            version: 3,
            next: 9,
            live: vec![1, 4, 8],
            dead: vec![2],
        };
        assert_eq!(RunList::from_bytes(&list.to_bytes()).unwrap(), list);
    }
}
