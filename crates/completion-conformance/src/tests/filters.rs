//! Filtered streams never show a non-matching event.

use super::*;

/// A namespace filter yields exactly the events of its namespace (not of one whose name
/// merely starts the same), in order.
pub async fn filter_by_namespace(harness: &dyn Harness) {
    let b = backend(harness, BackendOptions::default()).await;
    let ns = namespace("filter-ns");
    let longer = Namespace::new(format!("{ns}x")).unwrap();
    let other = namespace("filter-ns-other");
    let mut stream = subscribe_filtered(&b, &ns_filter(&ns)).await;
    let mut expected = Vec::new();
    for round in 0..3 {
        expected.push(done(&b, &ns, &Tags::new()).await);
        done(&b, &longer, &Tags::new()).await;
        done(&b, &other, &tags([("round", "x")])).await;
        if round == 1 {
            expected.push(done(&b, &ns, &tags([("any", "tag")])).await);
        }
    }
    let marker = done(&b, &ns, &Tags::new()).await;
    let got = strictly_until(&mut stream, &marker, "namespace-filtered stream").await;
    assert_eq!(ids_of(&got), expected, "only {ns}, all of it, in order: {got:?}");
}

/// A tag filter yields exactly the events whose tags hold the key with exactly the value,
/// in any namespace; a missing key, another key with that value, a prefix, a case variant
/// or a pattern-like match never matches.
pub async fn filter_by_tag(harness: &dyn Harness) {
    let b = backend(harness, BackendOptions::default()).await;
    let (ns, other) = (namespace("filter-tag"), namespace("filter-tag-other"));
    let base = unique("team");
    // `_`, `%`, `.`, `*` are wildcards in SQL LIKE, Lua patterns and regular expressions.
    let value = format!("{base}_%.*");
    let mut stream = subscribe_filtered(&b, &tag_filter("team", &value)).await;
    let mut expected = Vec::new();
    expected.push(done(&b, &ns, &tags([("team", &value)])).await);
    done(&b, &ns, &tags([("team", &format!("{value}x"))])).await;
    done(&b, &ns, &tags([("team", &format!("{base}Xyz-anything"))])).await;
    done(&b, &ns, &tags([("team", &value.to_uppercase())])).await;
    done(&b, &ns, &Tags::new()).await;
    done(&b, &ns, &tags([("owner", &value)])).await;
    done(&b, &ns, &tags([("Team", &value)])).await;
    done(&b, &ns, &tags([("teams", &value)])).await;
    expected.push(done(&b, &ns, &tags([("aaa", "first"), ("team", &value), ("zzz", "last")])).await);
    expected.push(done(&b, &other, &tags([("team", &value)])).await);
    let marker = done(&b, &ns, &tags([("team", &value)])).await;
    let got = strictly_until(&mut stream, &marker, "tag-filtered stream").await;
    assert_eq!(ids_of(&got), expected, "exactly team={value:?}, all of it, in order: {got:?}");
}

/// A filter on namespace and tag yields only events matching both.
pub async fn filter_by_namespace_and_tag(harness: &dyn Harness) {
    let b = backend(harness, BackendOptions::default()).await;
    let (ns, other) = (namespace("filter-both"), namespace("filter-both-other"));
    let value = unique("team");
    let filter = ns_filter(&ns).with_tag(TagKey::new("team").unwrap(), TagValue::new(value.as_str()).unwrap());
    let mut stream = subscribe_filtered(&b, &filter).await;
    let mut expected = Vec::new();
    expected.push(done(&b, &ns, &tags([("team", &value)])).await);
    done(&b, &other, &tags([("team", &value)])).await;
    done(&b, &ns, &tags([("team", &format!("{value}x"))])).await;
    done(&b, &ns, &Tags::new()).await;
    done(&b, &ns, &tags([("owner", &value)])).await;
    expected.push(done(&b, &ns, &tags([("team", &value), ("tier", "gold")])).await);
    let marker = done(&b, &ns, &tags([("team", &value)])).await;
    let got = strictly_until(&mut stream, &marker, "namespace-and-tag-filtered stream").await;
    assert_eq!(ids_of(&got), expected, "only {ns} with team={value}: {got:?}");
}

/// While writers of other tenants (other namespaces, other tag values) write concurrently,
/// filtered streams (plain and resumable) yield only their matching events, all of them,
/// each writer's in commit order.
pub async fn filters_leak_nothing_under_load(harness: &dyn Harness) {
    const EACH: usize = 40;
    let b = backend(harness, BackendOptions::default()).await;
    let (a, other) = (namespace("load-a"), namespace("load-b"));
    let (mine, theirs) = (unique("mine"), unique("theirs"));
    let mine_tags = tags([("team", &mine)]);
    let by_ns = ns_filter(&a);
    let by_tag = tag_filter("team", &mine);
    let by_both = ns_filter(&a).with_tag(TagKey::new("team").unwrap(), TagValue::new(mine.as_str()).unwrap());
    let mut ns_stream = subscribe_filtered(&b, &by_ns).await;
    let mut tag_stream = subscribe_filtered(&b, &by_tag).await;
    let mut both_stream = subscribe_filtered(&b, &by_both).await;
    let mut resumable = subscribe_from(&b, StartFrom::Now, &by_both).await;
    let writers = [
        spawn_writer(b.engine.clone(), a.clone(), mine_tags.clone(), EACH),
        spawn_writer(b.engine.clone(), a.clone(), tags([("team", &theirs)]), EACH),
        spawn_writer(b.engine.clone(), other.clone(), mine_tags.clone(), EACH),
        spawn_writer(b.engine.clone(), other.clone(), Tags::new(), EACH),
        spawn_writer(b.engine.clone(), namespace("load-c"), tags([("team", &theirs)]), EACH),
    ];
    let mut written = Vec::new();
    for writer in writers {
        written.push(join_writer(writer).await);
    }
    let marker = done(&b, &a, &mine_tags).await;
    let got = ids_of(&strictly_until(&mut ns_stream, &marker, "namespace filter under load").await);
    assert_merge_of(&got, &[&written[0], &written[1]], "namespace filter under load");
    let got = ids_of(&strictly_until(&mut tag_stream, &marker, "tag filter under load").await);
    assert_merge_of(&got, &[&written[0], &written[2]], "tag filter under load");
    let got = ids_of(&strictly_until(&mut both_stream, &marker, "namespace and tag filter under load").await);
    assert_sequence(&got, &written[0], "namespace and tag filter under load");
    let mut items = Vec::new();
    loop {
        let item = next_item(&mut resumable, "the resumable filtered stream under load").await;
        if item.completion().is_some_and(|c| c.execution_id() == &marker) {
            break;
        }
        items.push(item);
    }
    assert_sequence(&item_ids(&items), &written[0], "resumable filtered stream under load");
    assert_no_gap(&items, "resumable filtered stream under load");
}
