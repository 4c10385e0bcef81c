"""fleetcore/missions.py, the one Python definition of the mission states, says what the database says: the
``mission_states`` table (which states exist, which are terminal) and the ``mission_transitions`` table (which
states a mission reaches once it left the queue)."""
from __future__ import annotations

from fleetcore import missions as mission_states
from tests.support.database import rows


def test_the_states_and_the_terminal_ones_are_the_tables(db_url):
    table = {row["state"]: row["terminal"] for row in rows(db_url, "SELECT state, terminal FROM mission_states")}
    assert len(set(mission_states.STATES)) == len(mission_states.STATES)
    assert set(mission_states.STATES) == set(table)
    assert set(mission_states.TERMINAL) == {state for state, terminal in table.items() if terminal}
    assert set(mission_states.OPEN) == {state for state, terminal in table.items() if not terminal}


def test_the_active_states_are_where_a_dispatched_mission_can_be_before_it_ends(db_url):
    transitions = rows(db_url, "SELECT from_state, to_state FROM mission_transitions")
    reachable, frontier = set(), {mission_states.DISPATCHED}
    while frontier:
        reachable |= frontier
        frontier = {t["to_state"] for t in transitions if t["from_state"] in frontier} - reachable
    assert reachable - {mission_states.QUEUED} - set(mission_states.TERMINAL) == set(mission_states.ACTIVE)
    assert (mission_states.QUEUED, *mission_states.ACTIVE) == mission_states.OPEN
