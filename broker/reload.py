"""Reloading the password file and the ACL file while the broker runs (`fleet broker` on SIGHUP).

As Mosquitto does on SIGHUP (`mosquitto_security_apply_default`), each file is read again from the
path the broker was started with, and then applied to the clients already connected:

- a file that fails to load (unreadable, or a bad line) keeps the rules in force, and logs one line
  naming the file and the line; the other file still reloads;
- new connections use the new files at once;
- a connected client the new password file would refuse at CONNECT (its user name is gone, or its
  password no longer matches; a TLS certificate's identity needs none) is disconnected (MQTT 5:
  DISCONNECT 0x87, not authorized), as in Mosquitto; its will is published as for any connection
  that ends without DISCONNECT;
- every subscription (of connected and offline sessions) is checked against the new ACL, and one
  the new ACL refuses (`AclFile.can_subscribe`) is removed: MQTT has no packet to tell the client,
  so it learns only by receiving nothing, which is what a denied subscription gives anyway. Every
  message is still checked for read access when it is routed, so a tightened ACL stops deliveries
  at once on subscriptions it does not remove (Mosquitto keeps those and only filters messages).
  Messages already queued for a session stay queued.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from broker.acl import AclFile
from broker.auth import PasswordFile
from fleet.errors import ConfigError, TopicError
from fleet.mqtt import reasons, v5
from fleet.packets import CONNACK_ACCEPTED

if TYPE_CHECKING:
    from broker.server import Broker

__all__ = ["reload_security"]

log = logging.getLogger("broker")


def reload_security(broker: Broker) -> None:
    """Read the broker's password and ACL files again and apply them; never raises for a bad file."""
    settings = broker.settings
    if settings.password_file is None and settings.acl_file is None:
        log.info("reload: no password file and no ACL file to reload")
        return
    if settings.password_file is not None:
        try:
            passwords = PasswordFile.load(settings.password_file)
        except ConfigError as exc:
            log.error("reload: kept the previous password file: %s", exc)
        else:
            broker.passwords = passwords
            _recheck_credentials(broker, passwords)
    if settings.acl_file is not None:
        try:
            acl = AclFile.load(settings.acl_file)
        except ConfigError as exc:
            log.error("reload: kept the previous ACL file: %s", exc)
        else:
            broker.acl = acl
            _recheck_subscriptions(broker, acl)


def _recheck_credentials(broker: Broker, passwords: PasswordFile) -> None:
    refused = 0
    for connection in list(broker.connections):
        if not connection.connected or connection.closing:
            continue
        # The rule of CONNECT again: a certificate's identity needs no password, anonymous clients
        # are judged by --allow-anonymous, which a reload does not change.
        code, _ = broker.authenticate(connection, connection.username, connection.password)
        if code == CONNACK_ACCEPTED:
            continue
        refused += 1
        connection.disconnect(reasons.NOT_AUTHORIZED)
    log.info(
        "reload: password file %s has %d users; disconnected %d clients it no longer accepts",
        passwords.path,
        len(passwords.users),
        refused,
    )


def _recheck_subscriptions(broker: Broker, acl: AclFile) -> None:
    removed = 0
    for session in list(broker.sessions.values()):
        for topic_filter in list(session.subscriptions):
            checked = topic_filter
            if v5.is_shared(topic_filter):
                # A shared subscription is checked on its inner filter, as at SUBSCRIBE.
                with contextlib.suppress(TopicError):
                    checked = v5.split_shared(topic_filter)[1]
            if not acl.can_subscribe(session.client_id, session.username, checked):
                broker.remove_subscription(session, topic_filter)
                removed += 1
    log.info("reload: ACL file %s in force; removed %d subscriptions it denies", acl.path, removed)
