//! Token counting and the context window: which part of a conversation goes
//! into a prompt, and which oldest part must be summarised first.
//!
//! Everything here is pure; `chat.rs` makes the LLM calls and stores the
//! results. The stored history is never cut: only the prompt is.

use std::sync::Arc;

use crate::config::Tokenizer;
use crate::domain::{ChatMessage, Role};
use crate::llm::Messages;
use crate::store::{StoredMessage, Summary};

/// Tokens a message costs beyond its content (role and separators), as in
/// OpenAI's accounting for chat models.
pub const MESSAGE_OVERHEAD: u32 = 4;
/// Tokens that prime the reply.
pub const REPLY_PRIMING: u32 = 3;

/// Counts tokens with one of tiktoken's encodings (loaded once, shared),
/// through `bpe-openai`: the same counts as tiktoken's `encode_ordinary`
/// (tests/properties checks them against tiktoken-rs), several times
/// faster. A text's count is the sum of its pre-tokenizer pieces' (mostly
/// words with their leading space); each thread keeps the counts of the
/// short pieces it met last ([`CACHED_PIECES`]), so a common word is
/// encoded once, not in every message (tiktoken's own core does the same
/// for pieces that are one token).
#[derive(Clone, Copy)]
pub struct TokenCounter {
    bpe: &'static bpe_openai::Tokenizer,
    /// Which of the thread's piece caches is this encoding's.
    slot: usize,
}

impl std::fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCounter")
    }
}

/// Pieces whose counts one thread keeps per encoding: a few hundred KiB at
/// most; the cache starts again when full.
const CACHED_PIECES: usize = 4096;
/// Longer pieces (rare: long numbers, runs of symbols) are counted each time.
const CACHED_PIECE_BYTES: usize = 32;

type PieceCounts = std::collections::HashMap<Box<str>, u32, foldhash::fast::RandomState>;

thread_local! {
    /// One cache per encoding (`TokenCounter::slot`).
    static PIECES: std::cell::RefCell<[PieceCounts; 2]> = Default::default();
}

impl TokenCounter {
    pub fn new(tokenizer: Tokenizer) -> Self {
        let (bpe, slot) = match tokenizer {
            Tokenizer::Cl100kBase => (bpe_openai::cl100k_base(), 0),
            Tokenizer::O200kBase => (bpe_openai::o200k_base(), 1),
        };
        Self { bpe, slot }
    }

    /// Tokens of `text` (special-token text counts as ordinary text).
    pub fn count(&self, text: &str) -> u32 {
        #[cfg(test)]
        counted::note(text);
        let text = self.bpe.normalize(text);
        let encoding = &self.bpe.bpe;
        PIECES.with_borrow_mut(|caches| {
            let cache = &mut caches[self.slot];
            self.bpe
                .split(text.as_str())
                .map(|piece| {
                    if piece.len() > CACHED_PIECE_BYTES {
                        return encoding.count(piece.as_bytes()) as u32;
                    }
                    if let Some(&count) = cache.get(piece) {
                        return count;
                    }
                    let count = encoding.count(piece.as_bytes()) as u32;
                    if cache.len() >= CACHED_PIECES {
                        cache.clear();
                    }
                    cache.insert(piece.into(), count);
                    count
                })
                .sum()
        })
    }

    /// Tokens `content` costs as one prompt message.
    pub fn message_cost(&self, content: &str) -> u32 {
        self.count(content) + MESSAGE_OVERHEAD
    }

    /// Pieces this thread keeps counts of for this encoding.
    #[cfg(test)]
    fn cached_pieces(&self) -> usize {
        PIECES.with_borrow(|caches| caches[self.slot].len())
    }
}

/// Tokens a prompt costs whose messages' contents count `counts`: each
/// message's overhead, and the tokens that prime the reply.
pub fn prompt_cost(counts: impl IntoIterator<Item = u32>) -> u64 {
    counts
        .into_iter()
        .map(|count| u64::from(count + MESSAGE_OVERHEAD))
        .sum::<u64>()
        + u64::from(REPLY_PRIMING)
}

/// The texts counted on this thread while a unit test records them, to
/// check what a turn counts (and that it counts nothing twice).
#[cfg(test)]
pub(crate) mod counted {
    use std::cell::RefCell;

    thread_local! {
        static COUNTED: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
    }

    pub(crate) fn note(text: &str) {
        COUNTED.with(|counted| {
            if let Some(texts) = counted.borrow_mut().as_mut() {
                texts.push(text.to_string());
            }
        });
    }

    /// Records from now on (on this thread).
    pub(crate) fn start() {
        COUNTED.with(|counted| *counted.borrow_mut() = Some(Vec::new()));
    }

    /// Stops recording; what was counted since [`start`].
    pub(crate) fn take() -> Vec<String> {
        COUNTED.with(|counted| counted.borrow_mut().take().unwrap_or_default())
    }
}

/// The prompt-side summary message.
pub fn summary_message(summary: &str) -> ChatMessage {
    ChatMessage::new(
        Role::System,
        format!("Summary of the earlier part of this conversation: {summary}"),
    )
}

/// A message's cost, using its cached count when there is one.
pub fn cost(counter: &TokenCounter, message: &StoredMessage) -> u32 {
    match message.tokens {
        Some(tokens) => tokens + MESSAGE_OVERHEAD,
        None => counter.message_cost(&message.message.content),
    }
}

/// What to send for one turn.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptPlan {
    /// History messages from this index on go into the prompt.
    pub first_kept: usize,
    /// History `[summarise_from, first_kept)` must be folded into a new
    /// summary (with the old one) before sending; `None` when the prompt fits.
    pub summarise_from: Option<usize>,
}

/// Decides which messages fit in `budget` tokens together with the new
/// message (`new_cost`) and a summary of at most `summary_cap` tokens.
///
/// Costs are computed once per message (`costs`, parallel to the history),
/// so a turn costs work in proportion to the history's length, never a
/// re-tokenisation of it.
pub fn plan(
    costs: &[u32],
    summary: Option<&Summary>,
    new_cost: u32,
    budget: u32,
    summary_cap: u32,
) -> PromptPlan {
    let covered = summary.map_or(0, |s| s.covers.min(costs.len()));
    let summary_cost = summary.map_or(0, |s| s.tokens + MESSAGE_OVERHEAD + 12);
    let tail: u32 = costs[covered..].iter().sum();
    if summary_cost + tail + new_cost + REPLY_PRIMING <= budget {
        return PromptPlan {
            first_kept: covered,
            summarise_from: None,
        };
    }
    // Fold the oldest uncovered messages into the summary until the rest,
    // with a summary of at most `summary_cap` tokens, fits.
    let reserved = summary_cap + MESSAGE_OVERHEAD + 12 + new_cost + REPLY_PRIMING;
    let mut first_kept = covered;
    let mut remaining = tail;
    while first_kept < costs.len() && reserved + remaining > budget {
        remaining -= costs[first_kept];
        first_kept += 1;
    }
    PromptPlan {
        first_kept,
        summarise_from: Some(covered),
    }
}

/// Tokens of messages one summary request folds at most: four summaries'
/// worth, and never more than the prompt budget leaves beside the earlier
/// summary, the new one and the request's own words. The rest of what a
/// plan would fold is folded by the turns that follow.
pub fn fold_limit(budget: u32, summary_cap: u32, previous_summary: u32) -> u32 {
    let room = budget.saturating_sub(summary_cap + previous_summary + 64);
    summary_cap.saturating_mul(4).min(room)
}

/// Where one bounded summary request stops: messages `[from, end)`, at
/// most `limit` tokens of them (`costs` as for [`plan`]), at least one
/// message so the summary always moves on, never past `first_kept`.
pub fn fold_end(costs: &[u32], from: usize, first_kept: usize, limit: u32) -> usize {
    let first_kept = first_kept.min(costs.len());
    let mut end = from;
    let mut total = 0u32;
    while end < first_kept {
        total = total.saturating_add(costs[end]);
        if total > limit && end > from {
            break;
        }
        end += 1;
    }
    end
}

/// Assembles the prompt from a plan's pieces, leaving out the oldest kept
/// messages if it still does not fit (a summary that came out longer than
/// asked, or no summary because summarising failed). `costs` are the
/// history's costs as [`plan`] got them (counted once per turn). Returns
/// the messages and their token count. The conversation's system prompt
/// (`system`, with its cost) is sent first and never left out.
#[allow(clippy::too_many_arguments)]
pub fn assemble(
    counter: &TokenCounter,
    history: &Arc<Vec<StoredMessage>>,
    costs: &[u32],
    first_kept: usize,
    system: Option<(ChatMessage, u32)>,
    summary: Option<&str>,
    new_message: &ChatMessage,
    new_cost: u32,
    budget: u32,
) -> (Messages, u32) {
    let mut summary_msg = summary.map(summary_message);
    let summary_cost = summary_msg
        .as_ref()
        .map_or(0, |m| counter.message_cost(&m.content));
    let system_cost = system.as_ref().map_or(0, |(_, cost)| *cost);
    let kept = &history[first_kept.min(history.len())..];
    let costs = &costs[first_kept.min(costs.len())..];
    let mut total =
        system_cost + summary_cost + costs.iter().sum::<u32>() + new_cost + REPLY_PRIMING;
    let mut skip = 0;
    while total > budget && skip < kept.len() {
        total -= costs[skip];
        skip += 1;
    }
    if total > budget && summary_msg.is_some() {
        summary_msg = None;
        total -= summary_cost;
    }
    let start = first_kept.min(history.len()) + skip;
    // The conversation's system prompt comes first, always kept.
    let head = system
        .map(|(message, _)| message)
        .into_iter()
        .chain(summary_msg)
        .collect();
    let messages = Messages::around(
        head,
        history.clone(),
        start..history.len(),
        vec![new_message.clone()],
    );
    (messages, total)
}

/// The request that folds `messages` (and an earlier summary) into one.
pub fn summary_request(previous: Option<&str>, messages: &[StoredMessage]) -> Vec<ChatMessage> {
    let mut text = String::new();
    if let Some(previous) = previous {
        text.push_str("Summary so far: ");
        text.push_str(previous);
        text.push('\n');
    }
    for m in messages {
        text.push_str(m.message.role.capitalized());
        text.push_str(": ");
        text.push_str(&m.message.content);
        text.push('\n');
    }
    vec![
        ChatMessage::new(
            Role::System,
            "You are a helpful assistant that summarizes conversations.",
        ),
        ChatMessage::new(
            Role::User,
            format!(
                "Please provide a concise summary of the following conversation:\n{text}\nSummary:"
            ),
        ),
    ]
}

/// Splits `text` into chunks of at most `max_tokens` tokens on line
/// boundaries, as the original did; a single line longer than that is split
/// inside (on character boundaries) so no chunk is ever over the limit.
pub fn chunk_text(counter: &TokenCounter, text: &str, max_tokens: u32) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut current = String::new();
    let mut current_tokens = 0u32;
    let flush = |chunks: &mut Vec<String>, current: &mut String, tokens: &mut u32| {
        let trimmed = current.trim();
        // Lines joined (and trimmed) can tokenise differently from the sum
        // of their counts: check the chunk as it will be sent.
        if counter.count(trimmed) > max_tokens {
            chunks.extend(split_long_line(counter, trimmed, max_tokens));
        } else if !trimmed.is_empty() {
            chunks.push(trimmed.to_string());
        }
        current.clear();
        *tokens = 0;
    };
    for line in text.lines() {
        // A line far longer than a chunk is cut at once: counting it whole
        // first would tokenise it once more than cutting it does.
        let tokens = if clearly_over(counter, line, max_tokens) {
            u32::MAX
        } else {
            counter.count(line) + 1
        };
        if tokens > max_tokens {
            flush(&mut chunks, &mut current, &mut current_tokens);
            for piece in split_long_line(counter, line, max_tokens) {
                chunks.push(piece);
            }
            continue;
        }
        if current_tokens + tokens > max_tokens {
            flush(&mut chunks, &mut current, &mut current_tokens);
        }
        current.push_str(line);
        current.push('\n');
        current_tokens += tokens;
    }
    flush(&mut chunks, &mut current, &mut current_tokens);
    chunks
}

/// Whether `line` certainly holds more than `max_tokens` tokens, judged
/// from its beginning: it is much longer than a chunk, and the first 16
/// bytes per allowed token already count well over the limit (with a margin,
/// since a beginning cut anywhere can tokenise a little differently from
/// the same text inside the line). Otherwise the line is counted whole.
fn clearly_over(counter: &TokenCounter, line: &str, max_tokens: u32) -> bool {
    let probe = (max_tokens as usize).saturating_mul(16);
    if line.len() <= probe.saturating_mul(2) {
        return false;
    }
    let mut end = probe;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    counter.count(&line[..end]) > max_tokens + max_tokens / 8 + 8
}

/// Cuts one line into pieces of at most `max_tokens` tokens, preferring to
/// cut at a space in the second half of a piece so words stay whole. Each
/// piece is counted as it is emitted (trimmed), since trimming can change
/// how text tokenises.
fn split_long_line(counter: &TokenCounter, line: &str, max_tokens: u32) -> Vec<String> {
    split_long_line_with(&|text| counter.count(text), line, max_tokens)
}

/// [`split_long_line`] with `count` as the tokenizer. The length of the
/// next piece is guessed from a window of text ahead, not from the whole
/// rest of the line: the window doubles until it holds more than a piece
/// and then follows the pieces' size, so the text counted is a small
/// multiple of the line (linear), where counting the rest of the line for
/// every piece was quadratic.
fn split_long_line_with(count: &dyn Fn(&str) -> u32, line: &str, max_tokens: u32) -> Vec<String> {
    let chars: Vec<char> = line.chars().collect();
    let n = chars.len();
    let base_window = (max_tokens as usize).saturating_mul(4).max(16);
    let mut window = base_window;
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < n {
        // Guess from the window's average, then shrink until it fits.
        let (end, tokens) = loop {
            let end = start.saturating_add(window).min(n);
            let ahead: String = chars[start..end].iter().collect();
            let tokens = count(&ahead);
            if tokens > max_tokens || end == n {
                break (end, tokens.max(1));
            }
            window = window.saturating_mul(2);
        };
        let mut len = ((end - start) as u64 * max_tokens as u64 / tokens as u64).max(1) as usize;
        len = len.min(end - start);
        loop {
            let mut cut = len;
            if start + cut < n {
                let half = start + cut / 2;
                if let Some(space) = chars[half..start + cut]
                    .iter()
                    .rposition(|c| c.is_whitespace())
                {
                    cut = cut / 2 + space + 1;
                }
            }
            let piece: String = chars[start..start + cut].iter().collect();
            let trimmed = piece.trim();
            if count(trimmed) <= max_tokens || cut == 1 {
                if !trimmed.is_empty() {
                    pieces.push(trimmed.to_string());
                }
                start += cut;
                window = cut.saturating_add(cut / 4).max(base_window);
                break;
            }
            len = (len * 9 / 10).max(1);
        }
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> TokenCounter {
        TokenCounter::new(Tokenizer::Cl100kBase)
    }

    fn stored(role: Role, content: &str) -> StoredMessage {
        StoredMessage {
            message: ChatMessage::new(role, content),
            tokens: Some(counter().count(content)),
        }
    }

    #[test]
    fn counts_tokens_like_tiktoken() {
        assert_eq!(counter().count("hello world"), 2);
        assert_eq!(counter().count(""), 0);
        // Whitespace before a word, at the end and before a line break are
        // where tiktoken's look-ahead matters; special-token text is text.
        let texts = [
            "Hello there!  How are   you?\n\n  ok  ",
            "x   \t\n  y\u{3000}\u{a0} z \r\n",
            "I'M here, they'LL see: 1234567 + 3.14159 == ?!",
            "<|endoftext|> and <|im_start|>user",
            "😀👍🏽 naïve café 日本語のテキスト Привет мир",
            "   ",
        ];
        for (tokenizer, tiktoken) in [
            (Tokenizer::Cl100kBase, tiktoken_rs::cl100k_base_singleton()),
            (Tokenizer::O200kBase, tiktoken_rs::o200k_base_singleton()),
        ] {
            let counter = TokenCounter::new(tokenizer);
            for text in texts {
                let expected = tiktoken.encode_ordinary(text).len() as u32;
                assert_eq!(counter.count(text), expected, "{tokenizer:?} {text:?}");
            }
        }
    }

    /// Counting a text again (from the thread's piece counts), and after
    /// the cache filled up and started again, gives bpe-openai's own count.
    #[test]
    fn counts_from_the_piece_cache_are_the_encodings_counts() {
        let texts = [
            "The same words, the same words, and the same words again.",
            " xxxxxxxxxxxxxw1 xxxxxxxxxxxxxw2 xxxxxxxxxxxxxw1",
            "a piece longer than the cache keeps: 12345678901234567890123456789012345678901234567890",
            "😀👍🏽 naïve café 日本語のテキスト Привет мир",
        ];
        for tokenizer in [Tokenizer::Cl100kBase, Tokenizer::O200kBase] {
            let counter = TokenCounter::new(tokenizer);
            let encoding = counter.bpe;
            for text in texts {
                let expected = encoding.count(text) as u32;
                assert_eq!(
                    counter.count(text),
                    expected,
                    "{tokenizer:?} {text:?}, first"
                );
                assert_eq!(
                    counter.count(text),
                    expected,
                    "{tokenizer:?} {text:?}, cached"
                );
            }
            // More distinct pieces than the cache holds: it starts again,
            // and stays bounded.
            let many: String = (0..CACHED_PIECES + 100)
                .map(|i| format!(" w{i}q"))
                .collect();
            assert_eq!(counter.count(&many), encoding.count(many.as_str()) as u32);
            assert!(counter.cached_pieces() <= CACHED_PIECES);
            assert!(counter.cached_pieces() > 0);
            for text in texts {
                assert_eq!(
                    counter.count(text),
                    encoding.count(text) as u32,
                    "{text:?}, after"
                );
            }
        }
    }

    #[test]
    fn a_prompt_that_fits_keeps_everything_after_the_summary() {
        let costs = [10, 10, 10];
        let summary = Summary {
            text: "s".into(),
            covers: 1,
            tokens: 5,
        };
        assert_eq!(
            plan(&costs, Some(&summary), 10, 1000, 100),
            PromptPlan {
                first_kept: 1,
                summarise_from: None
            }
        );
    }

    #[test]
    fn over_budget_folds_the_oldest_messages_into_the_summary() {
        let costs = [50, 50, 50, 50];
        let p = plan(&costs, None, 20, 150, 30);
        // 30 + 16 + 20 + 3 reserved = 69; two messages (100) would be 169 > 150.
        assert_eq!(
            p,
            PromptPlan {
                first_kept: 3,
                summarise_from: Some(0)
            }
        );
    }

    #[test]
    fn one_summary_request_folds_a_bounded_piece_and_always_moves_on() {
        let costs = [40, 40, 40, 40, 40, 300, 40];
        assert_eq!(fold_end(&costs, 0, 6, 100), 2);
        assert_eq!(fold_end(&costs, 2, 6, 100), 4);
        // One message over the limit is still folded alone.
        assert_eq!(fold_end(&costs, 5, 6, 100), 6);
        assert_eq!(fold_end(&costs, 0, 3, 1000), 3);
        assert_eq!(fold_limit(900, 50, 0), 200);
        assert_eq!(fold_limit(200, 50, 20), 66);
    }

    #[test]
    fn assemble_never_exceeds_the_budget_and_drops_oldest_first() {
        let c = counter();
        let history: Arc<Vec<_>> = Arc::new(
            (0..20)
                .map(|i| stored(Role::User, &format!("message number {i} with some words")))
                .collect(),
        );
        let new = ChatMessage::new(Role::User, "the new question");
        let new_cost = c.message_cost(&new.content);

        let costs: Vec<u32> = history.iter().map(|m| cost(&c, m)).collect();
        let (messages, total) = assemble(
            &c,
            &history,
            &costs,
            0,
            None,
            Some("a summary"),
            &new,
            new_cost,
            60,
        );

        assert!(total <= 60, "{total}");
        assert_eq!(messages.last(), Some(&new));
        let counted: u32 = messages
            .iter()
            .map(|m| c.message_cost(&m.content))
            .sum::<u32>()
            + REPLY_PRIMING;
        assert_eq!(counted, total);
        assert!(messages
            .iter()
            .any(|m| m.content.contains("message number 19")));
        assert!(!messages
            .iter()
            .any(|m| m.content.contains("message number 0 ")));
    }

    #[test]
    fn the_system_prompt_comes_first_and_stays_while_older_messages_go() {
        let c = counter();
        let history: Arc<Vec<_>> = Arc::new(
            (0..20)
                .map(|i| stored(Role::User, &format!("message number {i} with some words")))
                .collect(),
        );
        let new = ChatMessage::new(Role::User, "the new question");
        let new_cost = c.message_cost(&new.content);
        let system = ChatMessage::new(Role::System, "You answer in French.");
        let system_cost = c.message_cost(&system.content);
        let costs: Vec<u32> = history.iter().map(|m| cost(&c, m)).collect();

        let (messages, total) = assemble(
            &c,
            &history,
            &costs,
            0,
            Some((system.clone(), system_cost)),
            Some("a summary"),
            &new,
            new_cost,
            70,
        );

        assert!(total <= 70, "{total}");
        let all: Vec<&ChatMessage> = messages.iter().collect();
        assert_eq!(all[0], &system);
        assert_eq!(messages.last(), Some(&new));
        let counted: u32 = messages
            .iter()
            .map(|m| c.message_cost(&m.content))
            .sum::<u32>()
            + REPLY_PRIMING;
        assert_eq!(counted, total);
        assert!(!messages
            .iter()
            .any(|m| m.content.contains("message number 0 ")));
    }

    #[test]
    fn trimming_a_chunk_never_takes_it_over_the_limit() {
        // Found by the property test: " s" is one token, "s" without its
        // space tokenises with what follows into more.
        let c = counter();
        let text = " sééqy中nqgjae中a中a中\n";

        let chunks = chunk_text(&c, text, 15);

        assert!(chunks.iter().all(|ch| c.count(ch) <= 15), "{chunks:?}");
        assert_eq!(
            chunks.concat().replace(' ', ""),
            text.trim().replace(' ', "")
        );
    }

    /// Cutting a long line counts a small multiple of its text, not the
    /// rest of the line again for every piece (which took minutes of CPU
    /// for a 5 MB upload on one line).
    #[test]
    fn cutting_a_long_line_counts_a_linear_amount_of_text() {
        let c = counter();
        let counted = std::cell::Cell::new(0usize);
        let count = |text: &str| {
            counted.set(counted.get() + text.len());
            c.count(text)
        };
        let line = "the quarterly report shows growth in most regions ".repeat(4_000);

        let pieces = split_long_line_with(&count, &line, 500);

        assert!(pieces.iter().all(|p| c.count(p) <= 500));
        let words: usize = pieces.iter().map(|p| p.split_whitespace().count()).sum();
        assert_eq!(words, 8 * 4_000, "no text lost");
        assert!(
            counted.get() <= 12 * line.len(),
            "counted {} bytes for a line of {}",
            counted.get(),
            line.len()
        );
    }

    #[test]
    fn a_very_long_line_is_cut_as_before_without_being_counted_whole_first() {
        let c = counter();
        let words: Vec<String> = (0..6000).map(|i| format!("word{i}")).collect();
        let line = words.join(" ");
        assert!(clearly_over(&c, &line, 100));
        assert!(!clearly_over(&c, "short line", 100));
        // A long run of one character tokenises densely: counted whole.
        assert!(!clearly_over(&c, &" ".repeat(4000), 100));
        assert_eq!(chunk_text(&c, &line, 100), split_long_line(&c, &line, 100));
    }

    #[test]
    fn chunks_respect_the_limit_and_keep_all_text() {
        let c = counter();
        let long_line = "word ".repeat(300);
        let text = format!("short line one\nshort line two\n{long_line}\nlast line");

        let chunks = chunk_text(&c, &text, 50);

        assert!(chunks.len() >= 7, "{}", chunks.len());
        assert!(chunks.iter().all(|ch| c.count(ch) <= 50));
        let words: usize = chunks.iter().map(|ch| ch.matches("word").count()).sum();
        assert_eq!(words, 300);
        assert!(chunks[0].starts_with("short line one\nshort line two"));
        assert_eq!(chunks.last().unwrap(), "last line");
    }
}
