"""Linked observation groups (plain Python: no Tango, no HTTP).

:mod:`.domain` holds what a group is; :mod:`.coordinator` its rules and persistence. The
OETGroups Tango device (:mod:`ska_oso_oet.tango.groups`) adapts them: it watches the member
devices and sends the stops.
"""

from .coordinator import (
    GROUP_CREATED,
    GROUP_MEMBER,
    GROUP_STATECHANGE,
    GroupCoordinator,
    GroupNotFound,
    GroupStore,
)
from .domain import Group, GroupState, HaltOrder, HaltPolicy, Member, MemberSpec

__all__ = [
    "GROUP_CREATED",
    "GROUP_MEMBER",
    "GROUP_STATECHANGE",
    "Group",
    "GroupCoordinator",
    "GroupNotFound",
    "GroupState",
    "GroupStore",
    "HaltOrder",
    "HaltPolicy",
    "Member",
    "MemberSpec",
]
