#!/usr/bin/env bash
# Post-quantum backups against age's own JavaScript implementation (typage, the npm package
# age-encryption, by age's author), both ways: a file sealed through linkage's age-plugin-pq
# opens there, and one sealed there opens here. Needs node and npm, so it is not part of
# `make test`; run it after changing linkage/agepq.py or linkage/ageplugin.py:
#   bash tools/age_interop.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY="$ROOT/.venv/bin/python"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
npm install --silent --no-audit --no-fund age-encryption@0.3.1 >/dev/null
cat > typage.mjs <<'JS'
import { Encrypter, Decrypter, generateHybridIdentity, identityToRecipient } from "age-encryption"
import { readFileSync, writeFileSync } from "node:fs"
const [mode, a, b, c] = process.argv.slice(2)
if (mode === "decrypt") {
  const d = new Decrypter()
  d.addIdentity(readFileSync(b, "utf8").split("\n").find(l => l.startsWith("AGE-SECRET-KEY-PQ-1")))
  writeFileSync(c, await d.decrypt(readFileSync(a)))
} else if (mode === "encrypt") {
  const e = new Encrypter()
  e.addRecipient(b)
  writeFileSync(c, await e.encrypt(readFileSync(a)))
} else {
  const identity = await generateHybridIdentity()
  console.log(identity + "\n" + await identityToRecipient(identity))
}
JS
head -c 300000 /dev/urandom > plain.bin
"$PY" -m linkage backup keygen --post-quantum --out ours.key >/dev/null
node typage.mjs keygen > theirs.txt
sed -n 1p theirs.txt > theirs.key
"$PY" - <<'PY'
from pathlib import Path

import pyrage

from linkage import agepq, backup

ours = [line.split()[-1] for line in Path("ours.key").read_text().splitlines() if "public key" in line]
sealed = pyrage.encrypt(Path("plain.bin").read_bytes(), backup.recipients(ours).for_age)
Path("ours.age").write_bytes(sealed)
identity, recipient = Path("theirs.txt").read_text().split()
assert str(agepq.Identity.parse(identity).recipient()) == recipient, "typage's recipient differs"
PY
node typage.mjs decrypt ours.age ours.key ours.out
cmp plain.bin ours.out
node typage.mjs encrypt plain.bin "$(sed -n 2p theirs.txt)" theirs.age
"$PY" - <<'PY'
from pathlib import Path

import pyrage

from linkage import backup

opened = pyrage.decrypt(Path("theirs.age").read_bytes(), backup.identities(Path("theirs.key")))
assert opened == Path("plain.bin").read_bytes(), "typage's file did not open whole"
PY
echo "OK: typage opens what linkage seals to a post-quantum key, linkage opens what typage seals, and both derive the same recipient"
