"""AccountStore: mail accounts and their argon2id password hashes.

Kept in a small LMDB environment under data_dir/accounts, so `relay users add` on a
running server takes effect at the next lookup, from every worker, without a reload.
Addresses are stored lower-cased (local parts are compared case-insensitively, as
Postfix and Dovecot do by default); passwords only as argon2id hashes (RFC 9106).

Imports: lmdb, argon2, stdlib.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import argon2
import lmdb

# RFC 5233-style subaddress: user+tag@domain is delivered to user@domain.
SUBADDRESS_DELIMITER = "+"


class AccountError(ValueError):
    pass


class AccountStore:
    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(path), map_size=256 << 20, max_dbs=2, subdir=True,
                             readonly=False, sync=True, readahead=False)
        self.db = self.env.open_db(b"accounts")
        self._hasher = argon2.PasswordHasher(type=argon2.Type.ID)

    def close(self) -> None:
        self.env.close()

    @staticmethod
    def normalize(address: str) -> str:
        local, at, domain = address.strip().rpartition("@")
        if not at or not local or not domain or any(c.isspace() for c in address.strip()):
            raise AccountError(f"not an address: {address!r}")
        return f"{local.lower()}@{domain.lower().rstrip('.')}"

    def add(self, address: str, password: str) -> str:
        if not password:
            raise AccountError("empty password")
        key = self.normalize(address)
        record = {"hash": self._hasher.hash(password), "created": int(time.time())}
        with self.env.begin(write=True) as txn:
            if not txn.put(key.encode(), json.dumps(record).encode(), db=self.db,
                           overwrite=False):
                raise AccountError(f"account exists: {key}")
        return key

    def delete(self, address: str) -> bool:
        with self.env.begin(write=True) as txn:
            return bool(txn.delete(self.normalize(address).encode(), db=self.db))

    def list(self) -> list[str]:
        with self.env.begin() as txn:
            return [k.decode() for k, _ in txn.cursor(db=self.db)]

    def resolve(self, local: str, domain: str) -> str | None:
        """The account that receives mail for local@domain, or None."""
        domain = domain.lower().rstrip(".")
        local = local.lower()
        with self.env.begin() as txn:
            key = f"{local}@{domain}"
            if txn.get(key.encode(), db=self.db) is not None:
                return key
            base, plus, _ = local.partition(SUBADDRESS_DELIMITER)
            if plus and base:
                key = f"{base}@{domain}"
                if txn.get(key.encode(), db=self.db) is not None:
                    return key
        return None

    def password_hash(self, address: str) -> str | None:
        """The account's stored argon2id hash (one LMDB read, no hashing), or None."""
        try:
            key = self.normalize(address)
        except AccountError:
            return None
        return self._stored_hash(key)

    def verified_hash(self, address: str, password: str) -> str | None:
        """The stored hash `password` was verified against (argon2id, slow), or None.

        Returning the very hash that was checked lets a cache bind its entry to it
        (relay.auth.cache), even if the account is replaced during the check."""
        try:
            key = self.normalize(address)
        except AccountError:
            return None
        stored = self._stored_hash(key)
        if stored is None:
            # Spend the same time as a real check so timing does not reveal accounts.
            try:
                self._hasher.verify(_dummy_hash(), password)
            except argon2.exceptions.VerificationError:
                pass
            return None
        try:
            return stored if self._hasher.verify(stored, password) else None
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return None

    def verify(self, address: str, password: str) -> bool:
        return self.verified_hash(address, password) is not None

    def _stored_hash(self, key: str) -> str | None:
        with self.env.begin() as txn:
            raw = txn.get(key.encode(), db=self.db)
        return None if raw is None else str(json.loads(raw)["hash"])


@functools.cache
def _dummy_hash() -> str:
    return argon2.PasswordHasher(type=argon2.Type.ID).hash("relay-dummy-password")
