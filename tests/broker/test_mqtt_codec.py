"""The MQTT 3.1.1 codec and the topic matching that the broker's correctness rests on."""
from __future__ import annotations

import pytest

from emqx.standin.mqtt import codec
from emqx.standin.topics import SubscriptionTrie, filter_matches, valid_topic_filter, valid_topic_name


def test_frames_split_across_reads_and_joined_in_one_read():
    packet = codec.encode_publish(codec.encode_topic("a/b"), b"x" * 300, 1, False, 7)
    reader = codec.FrameReader(1024)
    assert reader.feed(packet[:1]) == []
    assert reader.feed(packet[1:3]) == []                   # inside the 2-byte remaining length
    frames = reader.feed(packet[3:] + codec.PINGREQ_PACKET)
    assert [f[0] for f in frames] == [codec.PUBLISH, codec.PINGREQ]
    topic, qos, pid, retain, dup, payload = codec.decode_publish(frames[0][1], frames[0][2])
    assert (topic, qos, pid, retain, dup, payload) == ("a/b", 1, 7, False, False, b"x" * 300)
    assert reader.buffered == 0


def test_packet_over_max_size_is_refused_from_the_header_alone():
    reader = codec.FrameReader(100)
    header_only = codec.encode_publish(codec.encode_topic("t"), b"y" * 200, 0, False)[:3]
    with pytest.raises(codec.PacketTooLarge):
        reader.feed(header_only)


def test_remaining_length_longer_than_four_bytes_is_malformed():
    with pytest.raises(codec.MalformedPacket):
        codec.FrameReader(1 << 30).feed(bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]))


def test_connect_round_trip_with_will_and_credentials():
    raw = codec.encode_connect("veh-1", clean_session=False, keepalive=42, username="veh-1", password=b"s3cret",
                               will=codec.Will("fleet/v1/veh-1/connection", b"gone", 1, True))
    (_ptype, flags, body), = codec.FrameReader(1024).feed(raw)
    packet = codec.decode_connect(flags, body)
    assert (packet.client_id, packet.clean_session, packet.keepalive) == ("veh-1", False, 42)
    assert (packet.username, packet.password) == ("veh-1", b"s3cret")
    assert packet.will == codec.Will("fleet/v1/veh-1/connection", b"gone", 1, True)


def test_mqtt5_connect_is_an_unsupported_protocol_not_a_malformed_packet():
    (_ptype, flags, body), = codec.FrameReader(1024).feed(codec.encode_connect("c", proto_ver=5))
    with pytest.raises(codec.UnsupportedProtocol) as info:
        codec.decode_connect(flags, body)
    assert info.value.level == 5


@pytest.mark.parametrize("mutate", [
    lambda b: b[:-1],                                           # truncated
    lambda b: b.replace(b"\x04\x02", b"\x04\x03", 1),            # reserved flag
])
def test_broken_connect_is_malformed(mutate):
    (_ptype, flags, body), = codec.FrameReader(1024).feed(codec.encode_connect("c"))
    with pytest.raises(codec.MalformedPacket):
        codec.decode_connect(flags, mutate(body))


def test_subscribe_decoding_validates_flags_and_qos():
    raw = codec.encode_subscribe(5, [("a/+", 1), ("b/#", 0)])
    (_ptype, flags, body), = codec.FrameReader(1024).feed(raw)
    assert codec.decode_subscribe(flags, body) == (5, [("a/+", 1), ("b/#", 0)])
    with pytest.raises(codec.MalformedPacket):
        codec.decode_subscribe(0, body)
    with pytest.raises(codec.MalformedPacket):
        codec.decode_subscribe(flags, body[:-1] + b"\x03")


def test_publish_qos3_and_packet_id_zero_are_malformed():
    body = codec.encode_topic("t") + b"\x00\x00" + b"p"
    with pytest.raises(codec.MalformedPacket):
        codec.decode_publish(0b0110, body)
    with pytest.raises(codec.MalformedPacket):
        codec.decode_publish(0b0010, body)


@pytest.mark.parametrize("name,ok", [("a/b", True), ("a/+", False), ("#", False), ("", False), ("/", True)])
def test_topic_names(name, ok):
    assert valid_topic_name(name) is ok


@pytest.mark.parametrize("flt,ok", [("a/+/c", True), ("#", True), ("a/#", True), ("a/#/c", False),
                                    ("a+/b", False), ("a/b#", False), ("+", True), ("", False)])
def test_topic_filters(flt, ok):
    assert valid_topic_filter(flt) is ok


@pytest.mark.parametrize("flt,topic,ok", [
    ("a/+/c", "a/b/c", True), ("a/+", "a/b/c", False), ("a/#", "a", True), ("a/#", "a/b/c", True),
    ("+/+", "/x", True), ("#", "$SYS/x", False), ("+/x", "$SYS/x", False), ("$SYS/#", "$SYS/x", True),
    ("a/b", "a/b", True), ("a/b", "a/c", False),
])
def test_filter_matching(flt, topic, ok):
    assert filter_matches(flt, topic) is ok
    trie: SubscriptionTrie[str] = SubscriptionTrie()
    trie.add(flt, "s", 1)
    assert (("s", 1) in trie.match(topic)) is ok


def test_trie_gives_one_copy_per_matching_subscription_and_forgets_removed_filters():
    """EMQX dispatches per matched filter: overlapping filters of one client mean one copy each, at its QoS."""
    trie: SubscriptionTrie[str] = SubscriptionTrie()
    trie.add("fleet/v1/+/telemetry", "a", 0)
    trie.add("fleet/v1/veh-1/#", "a", 1)
    trie.add("fleet/v1/veh-1/telemetry", "b", 0)
    trie.add("fleet/v1/veh-1/telemetry", "b", 2)          # a re-subscription replaces the QoS: still one copy
    assert sorted(trie.match("fleet/v1/veh-1/telemetry")) == [("a", 0), ("a", 1), ("b", 2)]
    trie.remove("fleet/v1/veh-1/#", "a")
    assert sorted(trie.match("fleet/v1/veh-1/telemetry")) == [("a", 0), ("b", 2)]
    trie.remove("fleet/v1/+/telemetry", "a")
    trie.remove("fleet/v1/veh-1/telemetry", "b")
    assert trie.match("fleet/v1/veh-1/telemetry") == []
    assert trie.count == 0 and list(trie.filters()) == []
