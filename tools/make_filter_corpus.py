#!/usr/bin/env python3
"""Writes the labelled corpus the PII and secret detectors are measured on:
tests/data/filters/pii_secrets.jsonl, one JSON object a line:
  {"text": ..., "labels": [{"type": T, "start": B, "end": B}], "kind": "positive"|"hard_negative", "about": T}
Offsets are UTF-8 byte offsets. Types: email phone card iban ssn ip dob address secret.
Positives are generated valid by construction (Luhn, mod-97, SSA rules, real formats); hard
negatives look like them but are not (checksums fail, code, versions, UUIDs, hashes, ...).
Deterministic: a fixed seed. Independent of the Rust detectors on purpose.
"""
import base64
import json
import random
import string
import sys
from pathlib import Path

R = random.Random(20261129)
OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "filters" / "pii_secrets.jsonl"


class Line:
    def __init__(self):
        self.parts, self.labels, self.pos = [], [], 0

    def add(self, s, label=None):
        b = len(s.encode("utf-8"))
        if label:
            self.labels.append({"type": label, "start": self.pos, "end": self.pos + b})
        self.parts.append(s)
        self.pos += b
        return self

    def text(self):
        return "".join(self.parts)


def fill(template, value, label):
    """template has one {} where value goes."""
    before, after = template.split("{}")
    return Line().add(before).add(value, label).add(after)


FIRST = ["jane", "john", "maria", "li", "ahmed", "olga", "pierre", "sofia", "kenji", "amara", "lukas", "noah"]
LAST = ["doe", "smith", "garcia", "wang", "khan", "petrova", "martin", "rossi", "tanaka", "okafor", "becker"]
DOMAINS = ["example.com", "example.org", "mail.de", "uni-heidelberg.de", "acme.co.uk", "gmail.com", "outlook.com",
           "firma.at", "company.io", "post.example.net", "univ.edu", "agency.gov"]


def email():
    f, l = R.choice(FIRST), R.choice(LAST)
    local = R.choice([f"{f}.{l}", f"{f}{R.randint(1, 99)}", f"{f[0]}{l}", f"{f}_{l}", f"{f}+news", f"{l}.{f}"])
    return f"{local}@{R.choice(DOMAINS)}"


def luhn_complete(prefix, length):
    digits = prefix + "".join(R.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in "0123456789":
        n = digits + check
        s = 0
        for i, c in enumerate(reversed(n)):
            v = int(c)
            if i % 2 == 1:
                v *= 2
                v = v - 9 if v > 9 else v
            s += v
        if s % 10 == 0:
            return n


def luhn_break(n):
    last = int(n[-1])
    return n[:-1] + str((last + R.randint(1, 9)) % 10)


def card_number():
    kind = R.choice(["visa", "mc", "mc2", "amex", "discover", "jcb"])
    if kind == "visa":
        return luhn_complete("4", 16), [4, 4, 4, 4]
    if kind == "mc":
        return luhn_complete(str(R.randint(51, 55)), 16), [4, 4, 4, 4]
    if kind == "mc2":
        return luhn_complete(str(R.randint(2221, 2720)), 16), [4, 4, 4, 4]
    if kind == "amex":
        return luhn_complete(R.choice(["34", "37"]), 15), [4, 6, 5]
    if kind == "discover":
        return luhn_complete("6011", 16), [4, 4, 4, 4]
    return luhn_complete(str(R.randint(3528, 3589)), 16), [4, 4, 4, 4]


def grouped(n, groups, sep):
    out, i = [], 0
    for g in groups:
        out.append(n[i:i + g])
        i += g
    return sep.join(out)


IBAN_BBAN = {"DE": (18, "n"), "GB": (18, "gb"), "FR": (23, "n"), "NL": (14, "nl"), "ES": (20, "n"),
             "IT": (23, "it"), "CH": (17, "n"), "AT": (16, "n"), "BE": (12, "n"), "PL": (24, "n")}


def iban_check(country, bban):
    s = bban + country + "00"
    num = "".join(str(int(c, 36)) for c in s)
    return 98 - int(num) % 97


def iban():
    country = R.choice(list(IBAN_BBAN))
    length, kind = IBAN_BBAN[country]
    if kind == "gb":
        bban = "".join(R.choice(string.ascii_uppercase) for _ in range(4)) + "".join(R.choice(string.digits) for _ in range(14))
    elif kind == "nl":
        bban = "".join(R.choice(string.ascii_uppercase) for _ in range(4)) + "".join(R.choice(string.digits) for _ in range(10))
    elif kind == "it":
        bban = R.choice(string.ascii_uppercase) + "".join(R.choice(string.digits) for _ in range(22))
    else:
        bban = "".join(R.choice(string.digits) for _ in range(length))
    return f"{country}{iban_check(country, bban):02d}{bban}"


def iban_format(i):
    return R.choice([i, " ".join(i[k:k + 4] for k in range(0, len(i), 4))])


def ssn():
    while True:
        area = R.randint(1, 899)
        if area != 666:
            break
    return f"{area:03d}", f"{R.randint(1, 99):02d}", f"{R.randint(1, 9999):04d}"


def ipv4():
    return ".".join(str(x) for x in [R.choice([10, 172, 192, 203, 198, 45, 81, 151]), R.randint(0, 255), R.randint(0, 255), R.randint(1, 254)])


def ipv6():
    groups = [f"{R.randint(0, 0xffff):x}" for _ in range(8)]
    groups[0] = R.choice(["2001", "fe80", "2a00", "2606"])
    if R.random() < 0.5:
        return ":".join(groups)
    return f"{groups[0]}:{groups[1]}::{groups[6]}:{groups[7]}"


MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"]


def date_str():
    y, m, d = R.randint(1940, 2005), R.randint(1, 12), R.randint(1, 28)
    return R.choice([f"{y}-{m:02d}-{d:02d}", f"{m:02d}/{d:02d}/{y}", f"{d} {MONTHS[m - 1]} {y}", f"{MONTHS[m - 1]} {d}, {y}", f"{d:02d}.{m:02d}.{y}"])


STREETS = ["Main St", "Oak Avenue", "Elm Street", "Maple Dr", "Sunset Blvd", "Cedar Lane", "Park Rd", "Lake Shore Drive"]
CITIES = [("Springfield", "IL"), ("Portland", "OR"), ("Austin", "TX"), ("Boston", "MA"), ("Denver", "CO"), ("Seattle", "WA"), ("Miami", "FL")]


def address():
    city, st = R.choice(CITIES)
    return f"{R.randint(1, 9999)} {R.choice(STREETS)}, {city}, {st} {R.randint(10000, 99999)}-{R.randint(1000, 9999)}"


B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
ALNUM = string.ascii_letters + string.digits


def rand(alphabet, n):
    return "".join(R.choice(alphabet) for _ in range(n))


def b64url(obj):
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode().rstrip("=")


def secret():
    kind = R.choice(["aws_id", "aws_secret", "github", "gitlab", "slack", "pem", "jwt", "generic"])
    if kind == "aws_id":
        v = R.choice(["AKIA", "ASIA"]) + rand(B32, 16)
        return R.choice(["aws_access_key_id = {}", "Key id: {}", "export AWS_ACCESS_KEY_ID={}", "found {} in the logs"]), v
    if kind == "aws_secret":
        v = rand(string.ascii_letters + string.digits + "/+", 40)
        return R.choice(["aws_secret_access_key = {}", "AWS_SECRET_ACCESS_KEY=\"{}\""]), v
    if kind == "github":
        return R.choice(["token: {}", "git clone https://{}@github.com/org/repo", "GITHUB_TOKEN={}"]), R.choice(["ghp_", "gho_", "ghs_"]) + rand(ALNUM, 36)
    if kind == "gitlab":
        return R.choice(["PRIVATE-TOKEN: {}", "use {} for the API"]), "glpat-" + rand(ALNUM + "_-", 20)
    if kind == "slack":
        return R.choice(["SLACK_BOT_TOKEN={}", "slack token {}"]), f"xoxb-{rand(string.digits, 12)}-{rand(string.digits, 13)}-{rand(ALNUM, 24)}"
    if kind == "pem":
        body = "\n".join(rand(string.ascii_letters + string.digits + "+/", 64) for _ in range(R.randint(3, 6)))
        t = R.choice(["RSA ", "EC ", "", "OPENSSH "])
        return "key file:\n{}\n", f"-----BEGIN {t}PRIVATE KEY-----\n{body}\n-----END {t}PRIVATE KEY-----"
    if kind == "jwt":
        v = f"{b64url({'alg': R.choice(['HS256', 'RS256']), 'typ': 'JWT'})}.{b64url({'sub': str(R.randint(1, 10**9)), 'name': R.choice(FIRST)})}.{rand(ALNUM + '-_', 43)}"
        return R.choice(["Authorization: Bearer {}", "session={}"]), v
    v = rand(ALNUM, R.randint(24, 40))
    return R.choice(["api_key = \"{}\"", "\"client_secret\": \"{}\"", "STRIPE_SECRET={}", "password: {}"]), v


def positives():
    out = []
    for _ in range(45):
        out.append(fill(R.choice(["Contact {} for details.", "Send the invoice to {}.", "From: Support <{}>", "email: {}",
                                  "Écrivez à {} avant lundi.", "cc {}; thanks"]), email(), "email"))
    phone_values = lambda: R.choice([
        ("+1 415 555 0{}".format(R.randint(100, 199)), True), ("+44 20 7946 0{}".format(R.randint(100, 999)), True),
        ("+49 30 {}".format(R.randint(1000000, 9999999)), True), ("+33 1 42 68 {:02d} {:02d}".format(R.randint(0, 99), R.randint(0, 99)), True),
        ("({}) {}-{:04d}".format(R.randint(201, 989), R.randint(200, 999), R.randint(0, 9999)), False),
        ("{}-{}-{:04d}".format(R.randint(201, 989), R.randint(200, 999), R.randint(0, 9999)), False),
        ("020 7946 {:04d}".format(R.randint(0, 9999)), False), ("030 {}".format(R.randint(1000000, 9999999)), False),
        ("+14155550{}".format(R.randint(100, 199)), True)])
    for _ in range(45):
        v, intl = phone_values()
        t = R.choice(["Call {} today.", "Tel.: {}", "phone {} (office)", "Mobile: {}", "Fax {}"]) if not intl or R.random() < 0.5 else R.choice(["Reach the desk on {}.", "Numbers: {}", "{} is the hotline"])
        out.append(fill(t, v, "phone"))
    for _ in range(45):
        n, groups = card_number()
        v = R.choice([n, grouped(n, groups, " "), grouped(n, groups, "-")])
        out.append(fill(R.choice(["Card number {} exp 09/27", "Paid with {}.", "cc: {}", "Charge {} please", "{} was declined"]), v, "card"))
    for _ in range(45):
        out.append(fill(R.choice(["IBAN: {}", "Please transfer to {} by Friday.", "Konto {} (Sparkasse)", "Bank account {}"]), iban_format(iban()), "iban"))
    for _ in range(45):
        a, g, s = ssn()
        v, t = R.choice([(f"{a}-{g}-{s}", R.choice(["SSN: {}", "Social Security Number {}", "applicant {} on file", "ss# {}"])),
                         (f"{a} {g} {s}", "social security number {}"), (f"{a}{g}{s}", "SSN {}")])
        out.append(fill(t, v, "ssn"))
    for _ in range(45):
        v = ipv4() if R.random() < 0.6 else ipv6()
        out.append(fill(R.choice(["Login from {} blocked.", "server {} is down", "ping {}", "Client IP: {}", "connect to {} on port 22", "{} requested /admin"]), v, "ip"))
    for _ in range(40):
        out.append(fill(R.choice(["Date of birth: {}", "born {} in Lyon", "DOB {}", "Birthday: {}", "Patient (born {}) was admitted"]), date_str(), "dob"))
    for _ in range(40):
        out.append(fill(R.choice(["Ship to: {}", "Address: {}", "{}", "She lives at {}."]), address(), "address"))
    for _ in range(50):
        t, v = secret()
        out.append(fill(t, v, "secret"))
    # Lines with two entities of different types.
    for _ in range(15):
        l = Line().add("Customer ").add(email(), "email").add(", card ")
        n, groups = card_number()
        l.add(grouped(n, groups, " "), "card").add(", IBAN ").add(iban(), "iban").add(".")
        out.append(l)
    return out


def hard_negatives():
    out = []
    neg = lambda about, text: out.append((about, Line().add(text)))
    for _ in range(35):
        n, groups = card_number()
        bad = luhn_break(n)
        neg("card", R.choice([f"Order {grouped(bad, groups, ' ')} shipped", f"ref {bad}", f"Card {grouped(bad, groups, '-')} (test)"]))
    for _ in range(10):
        neg("card", f"IMEI {luhn_complete('35', 15)} registered")  # Luhn-valid, but not a card length/issuer
        neg("card", f"Tracking number {luhn_complete('9', 16)}")   # Luhn-valid, no issuer starts with 9
    for _ in range(35):
        i = iban()
        bad = i[:-1] + str((int(i[-1]) + R.randint(1, 9)) % 10)
        neg("iban", R.choice([f"IBAN: {bad}", f"Konto {bad[:2]}{bad[2:4]} {bad[4:]}", f"ref {'XX' + i[2:]}"]))
    for _ in range(35):
        a, g, s = ssn()
        neg("ssn", R.choice([f"SSN: 000-{g}-{s}", f"SSN: 666-{g}-{s}", f"SSN: 9{a[1:]}-{g}-{s}", f"SSN: {a}-00-{s}", f"SSN: {a}-{g}-0000",
                             f"Invoice {a}{g}{s}", f"Order no. {a}-{g}-{s}-B", "SSN: 123-45-6789", f"ZIP {R.randint(10000, 99999)}-{R.randint(1000, 9999)}"]))
    for _ in range(40):
        neg("email", R.choice(["git clone git@github.com:org/repo.git", "y = weights@inputs.values", "pip install pkg@1.2.3",
                               "@Override public void run()", "ssh admin@localhost", "z = x@w.T + b", "npm i lodash@4.17.21",
                               "Use the @media query", "result = df@other.shape(", f"{R.choice(FIRST)}@{R.choice(LAST)}",
                               "decorators: @app.route('/')", "mailto: (none)"]))
    for _ in range(40):
        neg("ip", R.choice([f"upgraded to version {R.randint(1, 9)}.{R.randint(0, 20)}.{R.randint(0, 20)}.{R.randint(0, 99)}",
                            f"v{R.randint(1, 9)}.{R.randint(0, 9)}.{R.randint(0, 9)}.{R.randint(0, 9)} release notes", "OID 1.3.6.1.4.1.311.21.8",
                            f"see section {R.randint(1, 9)}.{R.randint(1, 9)}.{R.randint(1, 9)}.{R.randint(1, 9)}", "at 12:30:45 UTC",
                            "MAC 00:1a:2b:3c:4d:5e", "std::vector<int> v;", f"build {R.randint(1, 9)}.{R.randint(0, 9)}.{R.randint(100, 999)}.{R.randint(1, 99)}",
                            "value 256.300.1.1 is invalid", "time 10:15 to 11:45"]))
    for _ in range(40):
        neg("phone", R.choice([f"Invoice date {R.randint(1, 28):02d}.{R.randint(1, 12):02d}.{R.randint(2015, 2026)}", f"Due {R.randint(2015, 2026)}-{R.randint(1, 12):02d}-{R.randint(1, 28):02d}",
                               "ISBN 978-3-16-148410-0", f"Order no. {R.randint(201, 989)}-{R.randint(200, 999)}-{R.randint(1000, 9999)}",
                               f"Total 1 234 567.{R.randint(10, 99)} EUR", f"version {R.randint(1, 9)}.{R.randint(0, 9)}.{R.randint(0, 9)}",
                               f"Account # {R.randint(100, 999)}-{R.randint(100, 999)}-{R.randint(1000, 9999)}", f"Qty 12 Price {R.randint(100, 9999)}"]))
    for _ in range(35):
        neg("dob", R.choice([f"Invoice date {date_str()}", f"Due {date_str()}", f"Shipped on {date_str()}", f"Contract signed {date_str()}",
                             f"Meeting on {date_str()} at noon"]))
    for _ in range(30):
        neg("address", R.choice([f"Part no. {R.randint(10000, 99999)}-{R.randint(1000, 9999)}", f"Model {R.randint(10000, 99999)}-{R.randint(1000, 9999)} in stock",
                                 f"Ref {R.randint(10000, 99999)}-{R.randint(1000, 9999)}", "Springfield, IL", f"Lot {R.randint(10000, 99999)}-{R.randint(1000, 9999)} recalled"]))
    for _ in range(45):
        uuid = f"{rand('0123456789abcdef', 8)}-{rand('0123456789abcdef', 4)}-4{rand('0123456789abcdef', 3)}-a{rand('0123456789abcdef', 3)}-{rand('0123456789abcdef', 12)}"
        neg("secret", R.choice([f"request_id: {uuid}", f"sha256: {rand('0123456789abcdef', 64)}", f"commit {rand('0123456789abcdef', 40)}",
                                "api_key = YOUR_API_KEY_HERE", "password = ${DB_PASSWORD}", "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
                                "max_tokens: 4096", f"token_count = {R.randint(10**15, 10**16)}", "Authorization: Bearer <token>",
                                "ghp_short", "secret = \"xxxxxxxxxxxxxxxxxxxxxxxx\"", f"trace {uuid}", f"checksum md5 {rand('0123456789abcdef', 32)}",
                                "The secret ingredient is patience and practice", "token_type = bearer_access_token_v2"]))
    return out


def main():
    rows = []
    for l in positives():
        rows.append({"text": l.text(), "labels": l.labels, "kind": "positive", "about": l.labels[0]["type"]})
    for about, l in hard_negatives():
        rows.append({"text": l.text(), "labels": [], "kind": "hard_negative", "about": about})
    R.shuffle(rows)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    pos = sum(len(r["labels"]) for r in rows)
    negs = sum(1 for r in rows if r["kind"] == "hard_negative")
    print(f"wrote {OUT.name}: {len(rows)} lines, {pos} labelled entities, {negs} hard negatives", file=sys.stderr)


if __name__ == "__main__":
    main()
