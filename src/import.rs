//! Reading a ChatGPT data export (`conversations.json`): a JSON array of
//! conversations, each a message tree (`mapping`: node id → `{message,
//! parent, children}`) with the node last shown (`current_node`).
//!
//! Pure: [`parse`] checks the whole file and turns each conversation into
//! the active path (from `current_node` up to the root, reversed) and a
//! [`BranchPool`] of the other branches, or names the first thing wrong.
//! Only user and assistant messages with text are kept (string parts joined
//! with `"\n"`); system and tool messages, other parts, empty messages and
//! those hidden from the conversation are left out, their children hanging
//! from the nearest message kept above them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::ConversationLimits;
use crate::domain::{ConversationId, Role, UserId};
use crate::store::branches::{BranchNode, Mark, MAX_NODES};
use crate::store::{title_from, BranchPool, NewMessage};

/// Most conversations one import may hold.
pub const MAX_CONVERSATIONS: usize = 1000;

/// Most characters of an imported title.
const MAX_TITLE_CHARS: usize = 200;

/// One conversation of an export, ready to store.
#[derive(Debug, Clone)]
pub struct Imported {
    /// ChatGPT's id of it.
    pub source_id: String,
    pub title: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub history: Vec<NewMessage>,
    pub pool: BranchPool,
}

/// The id an imported conversation gets: the same for the same user and
/// ChatGPT conversation, so importing twice finds it there.
pub fn conversation_id(user: &UserId, source_id: &str) -> ConversationId {
    let digest = Sha256::new()
        .chain_update(b"chatgpt-import\0")
        .chain_update(user.as_ref().as_bytes())
        .chain_update(b"\0")
        .chain_update(source_id.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    let uuid = uuid::Builder::from_custom_bytes(bytes).into_uuid();
    ConversationId::parse(&uuid.to_string()).expect("a UUID is a conversation id")
}

/// The export's conversations, or a sentence naming what is wrong (the
/// first problem found; nothing is taken from a file with one).
pub fn parse(raw: &[u8], limits: &ConversationLimits) -> Result<Vec<Imported>, String> {
    let value: Value = serde_json::from_slice(raw).map_err(|e| {
        format!(
            "The file is not valid JSON (line {}, column {}).",
            e.line(),
            e.column()
        )
    })?;
    let Value::Array(items) = value else {
        return Err(
            "The file is not a ChatGPT export: conversations.json holds a list of conversations."
                .into(),
        );
    };
    if items.len() > MAX_CONVERSATIONS {
        return Err(format!(
            "The export holds {} conversations; at most {MAX_CONVERSATIONS} can be imported at once.",
            items.len()
        ));
    }
    let mut out: Vec<Imported> = Vec::with_capacity(items.len());
    for (k, item) in items.iter().enumerate() {
        let title = item
            .get("title")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| t.chars().take(MAX_TITLE_CHARS).collect::<String>());
        let name = match &title {
            Some(t) => format!("conversation {} ({t:?})", k + 1),
            None => format!("conversation {}", k + 1),
        };
        let conversation = one(item, title, limits).map_err(|why| format!("{name}: {why}."))?;
        if out.iter().any(|c| c.source_id == conversation.source_id) {
            return Err(format!("{name}: its id appears twice in the export."));
        }
        out.push(conversation);
    }
    Ok(out)
}

/// A node of the tree as read.
struct Node<'a> {
    parent: Option<&'a str>,
    children: Vec<&'a str>,
    message: Option<NewMessage>,
}

fn time(v: Option<&Value>) -> Option<DateTime<Utc>> {
    let secs = v?.as_f64()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    DateTime::from_timestamp_micros((secs * 1e6) as i64)
}

/// The message a node keeps, if any; `Err` when its shape is wrong.
fn message_of(raw: &Value) -> Result<Option<NewMessage>, &'static str> {
    if raw.is_null() {
        return Ok(None);
    }
    let role = raw
        .get("author")
        .and_then(|a| a.get("role"))
        .and_then(Value::as_str)
        .ok_or("has a message without an author role")?;
    let hidden = raw
        .get("metadata")
        .and_then(|m| m.get("is_visually_hidden_from_conversation"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let role = match role {
        "user" => Role::User,
        "assistant" => Role::Assistant,
        _ => return Ok(None),
    };
    let content = raw.get("content").ok_or("has a message without content")?;
    let kind = content
        .get("content_type")
        .and_then(Value::as_str)
        .ok_or("has a message without a content type")?;
    if hidden || !matches!(kind, "text" | "multimodal_text") {
        return Ok(None);
    }
    let parts = match content.get("parts") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(parts)) => parts,
        Some(_) => return Err("has a message whose parts are not a list"),
    };
    let text: Vec<&str> = parts.iter().filter_map(Value::as_str).collect();
    let text = text.join("\n");
    if text.trim().is_empty() {
        return Ok(None);
    }
    Ok(Some(NewMessage {
        role,
        content: text,
        tokens: None,
    }))
}

fn one(
    item: &Value,
    title: Option<String>,
    limits: &ConversationLimits,
) -> Result<Imported, String> {
    if !item.is_object() {
        return Err("it is not an object".into());
    }
    let source_id = ["conversation_id", "id"]
        .iter()
        .find_map(|key| item.get(*key).and_then(Value::as_str))
        .filter(|id| !id.is_empty() && id.len() <= 200)
        .ok_or("it has no conversation_id")?
        .to_string();
    let mapping = item
        .get("mapping")
        .and_then(Value::as_object)
        .ok_or("it has no mapping")?;
    let mut nodes: HashMap<&str, Node<'_>> = HashMap::with_capacity(mapping.len());
    for (id, raw) in mapping {
        let parent = match raw.get("parent") {
            None | Some(Value::Null) => None,
            Some(Value::String(p)) => Some(p.as_str()),
            Some(_) => {
                return Err(format!(
                    "mapping node {id:?} has a parent that is not an id"
                ))
            }
        };
        let children = match raw.get("children") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(c)) => c
                .iter()
                .map(|c| c.as_str())
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| format!("mapping node {id:?} has a child that is not an id"))?,
            Some(_) => {
                return Err(format!(
                    "mapping node {id:?} has children that are not a list"
                ))
            }
        };
        let message = message_of(raw.get("message").unwrap_or(&Value::Null))
            .map_err(|why| format!("mapping node {id:?} {why}"))?;
        nodes.insert(
            id.as_str(),
            Node {
                parent,
                children,
                message,
            },
        );
    }
    // Every parent and child named is there, and the two agree (checked in
    // the mapping's order, so the same file names the same problem).
    let mut roots = Vec::new();
    for id in mapping.keys() {
        let id = id.as_str();
        match nodes[id].parent {
            None => roots.push(id),
            Some(p) => {
                let Some(parent) = nodes.get(p) else {
                    return Err(format!("mapping node {id:?} has an unknown parent {p:?}"));
                };
                if !parent.children.contains(&id) {
                    return Err(format!(
                        "mapping node {id:?} is not among the children of its parent {p:?}"
                    ));
                }
            }
        }
    }
    for id in mapping.keys() {
        let id = id.as_str();
        for child in &nodes[id].children {
            match nodes.get(child) {
                None => {
                    return Err(format!(
                        "mapping node {id:?} has an unknown child {child:?}"
                    ))
                }
                Some(c) if c.parent != Some(id) => {
                    return Err(format!(
                        "mapping node {id:?} lists {child:?} as a child, whose parent is another"
                    ))
                }
                Some(_) => {}
            }
        }
    }
    if nodes.is_empty() {
        return Err("its mapping is empty".into());
    }
    if roots.len() != 1 {
        return Err(format!(
            "its mapping has {} roots (nodes without a parent), not one",
            roots.len()
        ));
    }
    let current = item
        .get("current_node")
        .and_then(Value::as_str)
        .ok_or("it has no current_node")?;
    if !nodes.contains_key(current) {
        return Err(format!(
            "its current_node {current:?} is not in the mapping"
        ));
    }

    // Walk the tree from the root: each kept message gets an id (in the
    // order of the children lists) and the kept message above it.
    struct Kept {
        id: u64,
        parent: Option<u64>,
        depth: u64,
        message: NewMessage,
    }
    let mut kept: Vec<Kept> = Vec::new();
    let mut kept_of: HashMap<&str, u64> = HashMap::new();
    let mut seen = 0usize;
    // (node, the kept message above it, its depth if kept)
    let mut stack: Vec<(&str, Option<u64>, u64)> = vec![(roots[0], None, 0)];
    while let Some((id, above, depth)) = stack.pop() {
        seen += 1;
        if seen > nodes.len() {
            return Err("its mapping has a cycle".into());
        }
        let node = &nodes[id];
        let (below, next_depth) = match &node.message {
            Some(message) => {
                let kept_id = kept.len() as u64 + 1;
                kept.push(Kept {
                    id: kept_id,
                    parent: above,
                    depth,
                    message: message.clone(),
                });
                kept_of.insert(id, kept_id);
                (Some(kept_id), depth + 1)
            }
            None => (above, depth),
        };
        for child in node.children.iter().rev() {
            stack.push((child, below, next_depth));
        }
    }
    if seen != nodes.len() {
        return Err("its mapping has a cycle".into());
    }

    // The active path: the kept messages from current_node up to the root.
    let mut active: Vec<u64> = Vec::new();
    let mut history: Vec<NewMessage> = Vec::new();
    let mut at = Some(current);
    while let Some(id) = at {
        if let (Some(k), Some(message)) = (kept_of.get(id), &nodes[id].message) {
            active.push(*k);
            history.push(message.clone());
        }
        at = nodes[id].parent;
    }
    active.reverse();
    history.reverse();
    let on_path: HashMap<u64, u64> = active
        .iter()
        .enumerate()
        .map(|(index, id)| (*id, index as u64))
        .collect();

    let mut pool = BranchPool {
        next: kept.len() as u64,
        ..BranchPool::default()
    };
    for k in kept {
        if on_path.contains_key(&k.id) {
            continue;
        }
        pool.nodes.push(BranchNode {
            id: k.id,
            // Hanging off the active path: `None`; below another branch:
            // that node.
            parent: k.parent.filter(|p| !on_path.contains_key(p)),
            depth: k.depth,
            role: k.message.role,
            content: k.message.content,
            tokens: None,
            left: 0,
        });
    }
    for (index, id) in active.iter().enumerate() {
        let index = index as u64;
        if pool
            .nodes
            .iter()
            .any(|n| n.parent.is_none() && n.depth == index)
        {
            pool.marks.push(Mark { index, id: *id });
        }
    }
    let count = history.len() as u64 + pool.nodes.len() as u64;
    let bytes: u64 = history.iter().map(|m| m.content.len() as u64).sum::<u64>() + pool.bytes();
    if pool.nodes.len() > MAX_NODES || !limits.has_room(0, 0, count, bytes) {
        return Err(format!(
            "{count} messages of {bytes} bytes are over the cap on one conversation \
             ({} messages, {} bytes)",
            limits.max_messages, limits.max_bytes
        ));
    }
    let title = title.or_else(|| {
        history
            .iter()
            .find(|m| m.role == Role::User)
            .and_then(|m| title_from(&m.content))
    });
    let created_at = time(item.get("create_time")).unwrap_or_else(Utc::now);
    let updated_at = time(item.get("update_time")).unwrap_or(created_at);
    Ok(Imported {
        source_id,
        title,
        created_at,
        updated_at,
        history,
        pool,
    })
}
