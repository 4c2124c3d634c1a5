# -*- test-case-name: tests.test_maildir_store -*-
"""The mailbox store on Maildir (the Maildir step of the flow): the end of
local delivery, and what POP3 and IMAP read.

Public names (stable):

- L{MaildirStore}C{(mail_root, hostname, clock, run_in_thread=None, *,
  opener=open, watcher=None)}:

  - C{mailbox_path(user) -> str}: the user's Maildir (``User.mailbox``
    under the mail root unless absolute; paths leaving it are refused);
  - C{deliver(path, message, unique, quota=None) -> Deferred[str]}: qmail
    delivery into the INBOX, exactly once per C{unique}; fires with the base
    name; fails with C{TemporaryError(MAILBOX_FULL)} over quota;
    C{deliver_sync(...)} is the same, blocking, for threads;
  - C{open_mailbox(path, folder="INBOX") -> Mailbox};
  - C{list_folders(path)}, C{create_folder(path, name)},
    C{create_folders(path, names) -> created},
    C{delete_folder(path, name)}, C{rename_folder(path, old, new)},
    C{subscriptions(path)}, C{set_subscribed(path, name, bool)},
    C{set_subscribed_many(path, names, bool)};
  - C{subscribe(path, folder, callback) -> unsubscribe}: change
    notification, also of other programs' changes while the folder has
    listeners when a watcher is given (L{watch.make_watcher}); C{notify(path,
    folder)}; C{stop_watching()};
  - C{mailbox_size(path) -> int} (quota use), C{run_in_thread(f, *args)}.

- L{Mailbox}: C{name}, C{uidvalidity}, C{next_uid}, C{messages() ->
  list[MessageInfo]} (UID order), C{get(uid)}, C{refresh(force=False) ->
  bool}, C{read(uid) -> bytes}, C{get_file(uid)}, C{set_flags(uid, flags,
  keywords)}, C{add(message, flags, keywords, internal_date) -> uid},
  C{copy(uids, target) -> {old: new}}, C{expunge(uids) -> [uid]},
  C{take_recent() -> [uid]}, C{keywords()}, C{cache_get(base, key)},
  C{cache_get_many(bases, key)}, C{cache_put(base, key, value, fields)},
  C{cache_put_fields(entries)}, C{cache_match(field, needle, bases)} (the
  header-field index that SEARCH uses), C{columns()}, C{uids()},
  C{flag_sets()}, C{messages_later()}, C{with_dates(infos) -> list[MessageInfo]}
  (internal dates not known yet taken and kept), C{generation} (changes with
  the snapshot), C{changed_on_disk()}, C{close()}.

- L{MessageInfo}: C{uid, base, filename, size, internal_date, flags,
  keywords, recent}; C{internal_date} is L{UNKNOWN_DATE} (0) until
  C{with_dates} gives it (L{dates_unknown}C{(infos) -> bool} tells).

- L{Flag} (Maildir letters), L{IMAP_SYSTEM_FLAGS} (IMAP name to letter).

- Errors: L{MaildirError} and its subclasses L{FolderNameError},
  L{NoSuchFolderError}, L{FolderExistsError}, L{NoSuchMessageError},
  L{KeywordError}.

On-disk formats are documented in L{uidlist}, L{keywords}, L{cache} and
L{delivery}; the layout in L{store}; change watching in L{watch}.
"""

from twistedmail.maildir.keywords import KeywordError
from twistedmail.maildir.names import (
    IMAP_SYSTEM_FLAGS,
    Flag,
    FolderNameError,
    MaildirError,
)
from twistedmail.maildir.store import (
    FolderExistsError,
    Mailbox,
    MaildirStore,
    MessageInfo,
    NoSuchFolderError,
    NoSuchMessageError,
    dates_unknown,
)
from twistedmail.maildir.uidlist import UNKNOWN_DATE

__all__ = [
    "Flag",
    "FolderExistsError",
    "FolderNameError",
    "IMAP_SYSTEM_FLAGS",
    "KeywordError",
    "Mailbox",
    "MaildirError",
    "MaildirStore",
    "MessageInfo",
    "NoSuchFolderError",
    "NoSuchMessageError",
    "UNKNOWN_DATE",
    "dates_unknown",
]
