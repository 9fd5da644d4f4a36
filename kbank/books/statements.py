"""Statement lines from the files a bank or payment provider sends (pure): CSV with a column
mapping, SWIFT MT940, ISO 20022 camt.053 (checked against the standard's schema). Every line
is validated; a file with a bad line is refused whole, each bad line named with its line
number and why, so nothing is half-imported.

A line's id is a digest of the account it is for and what it says (value date, amount,
currency, reference, counterparty) and how many identical lines came before it in its file:
importing the same file twice gives the same ids (the second import adds nothing), and a
line a statement really shows twice is two lines (a duplicate the reconciliation reports).
"""
from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import asdict, dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from kbank.streams.model import MAX_AMOUNT, is_currency, is_name

MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_TEXT = 140                      # a description or counterparty, as SWIFT bounds them
FORMATS = ("csv", "mt940", "camt053")
# digits after the decimal point of the currencies that do not have two (ISO 4217)
EXPONENTS = {"JPY": 0, "KRW": 0, "CLP": 0, "ISK": 0, "VND": 0, "BHD": 3, "KWD": 3, "OMR": 3,
             "JOD": 3, "TND": 3}
CAMT_SCHEMA = Path(__file__).resolve().parent / "schemas" / "camt.053.001.02.xsd"
CSV_COLUMNS = ("date", "amount", "currency", "reference", "counterparty", "description")


class StatementError(ValueError):
    """A file refused: every problem found, each `line N: why`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems[:20]) + (f" (and {len(problems) - 20} more)"
                                                     if len(problems) > 20 else ""))
        self.problems = problems


@dataclass(frozen=True)
class StatementLine:
    account: str           # ours: the account this statement mirrors
    statement: str         # the statement's own id (MT940 :20:, camt Stmt/Id; CSV: the file's digest)
    line_no: int           # where it is in its file
    value_date: str        # YYYY-MM-DD
    amount: int            # minor units; money into the account is positive
    currency: str
    reference: str | None  # what the ledger knows it by (external_ref or request id)
    counterparty: str | None
    description: str
    line_id: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Any) -> "StatementLine":
        """A line read back from recon.lines, checked as a new one is (ValueError if not one)."""
        if not isinstance(d, dict) or set(d) != set(cls.__dataclass_fields__):
            raise ValueError("not a statement line")
        line = cls(**d)
        problem = line_problem(line)
        if problem is not None:
            raise ValueError(problem)
        return line


def line_problem(line: StatementLine) -> str | None:
    if not is_name(line.account) or not isinstance(line.statement, str) \
            or len(line.statement) > MAX_TEXT or type(line.line_no) is not int:
        return "account, statement or line number"
    if type(line.amount) is not int or line.amount == 0 or abs(line.amount) > MAX_AMOUNT:
        return f"amount must be a non-zero integer within {MAX_AMOUNT}"
    if not is_currency(line.currency):
        return f"currency {line.currency!r} is not a code of 3 to 12 letters or digits"
    try:
        date.fromisoformat(line.value_date)
    except (TypeError, ValueError):
        return f"value date {line.value_date!r} is not YYYY-MM-DD"
    if line.reference is not None and not is_name(line.reference):
        return "the reference must be 1 to 128 characters"
    for text in (line.counterparty, line.description):
        if text is not None and (not isinstance(text, str) or len(text) > MAX_TEXT):
            return f"counterparty and description are at most {MAX_TEXT} characters"
    if not isinstance(line.line_id, str) or not re.fullmatch(r"[0-9a-f]{32}", line.line_id):
        return "line id"
    return None


def minor_units(value: Decimal | str, currency: str) -> int:
    """An amount in the currency's minor units; ValueError if it has more decimals than the
    currency or is not a number."""
    try:
        amount = Decimal(value) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise ValueError(f"amount {value!r} is not a number") from None
    if not amount.is_finite():
        raise ValueError(f"amount {value!r} is not a number")
    scaled = amount.scaleb(EXPONENTS.get(currency, 2))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"amount {value} has more decimals than {currency} has")
    return int(scaled)


class _Lines:
    """Builds a file's lines, counting identical ones for their ids, gathering problems."""

    def __init__(self, account: str, statement: str) -> None:
        self.account, self.statement = account, statement
        self.lines: list[StatementLine] = []
        self.problems: list[str] = []
        self._seen: dict[tuple, int] = {}

    def add(self, line_no: int, value_date: str, amount: int, currency: str,
            reference: str | None, counterparty: str | None, description: str) -> None:
        what = (value_date, amount, currency, reference, counterparty)
        self._seen[what] = occurrence = self._seen.get(what, 0) + 1
        digest = hashlib.sha256("\0".join(map(str, (self.account, *what, occurrence)))
                                .encode("utf-8", "surrogatepass")).hexdigest()[:32]
        line = StatementLine(self.account, self.statement, line_no, value_date, amount,
                             currency, reference or None, counterparty or None,
                             (description or "")[:MAX_TEXT], digest)
        problem = line_problem(line)
        if problem is not None:
            self.problems.append(f"line {line_no}: {problem}")
        else:
            self.lines.append(line)

    def refuse(self, line_no: int, why: str) -> None:
        self.problems.append(f"line {line_no}: {why}")

    def done(self) -> list[StatementLine]:
        if self.problems:
            raise StatementError(self.problems)
        if not self.lines:
            raise StatementError(["the file holds no statement line"])
        return self.lines


def parse_csv(account: str, raw: bytes, columns: dict[str, str] | None = None) -> list[StatementLine]:
    """CSV with a header row; `columns` maps our fields (CSV_COLUMNS) to its header names
    (by default the same names). Dates are YYYY-MM-DD, amounts decimal with a point, money
    into the account positive."""
    mapping = {c: c for c in CSV_COLUMNS} | (columns or {})
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise StatementError([f"line 1: not UTF-8 ({exc.reason})"]) from None
    rows = csv.DictReader(io.StringIO(text, newline=""))
    missing = [mapping[c] for c in ("date", "amount", "currency") if mapping[c] not in
               (rows.fieldnames or [])]
    if missing:
        raise StatementError([f"line 1: the header lacks {', '.join(missing)} "
                              f"(map columns with --column FIELD=HEADER)"])
    out = _Lines(account, "csv-" + hashlib.sha256(raw).hexdigest()[:16])
    for row in rows:
        line_no = rows.line_num
        if None in row:
            out.refuse(line_no, "more cells than the header has")
            continue
        currency = (row.get(mapping["currency"]) or "").strip()
        try:
            amount = minor_units((row.get(mapping["amount"]) or "").strip(), currency)
        except ValueError as exc:
            out.refuse(line_no, str(exc))
            continue
        get = lambda field: (row.get(mapping[field]) or "").strip() or None  # noqa: E731
        out.add(line_no, (row.get(mapping["date"]) or "").strip(), amount, currency,
                get("reference"), get("counterparty"), get("description") or "")
    return out.done()


def parse_mt940(account: str, raw: bytes) -> list[StatementLine]:
    """SWIFT MT940: each :61: line is a statement line, its :86: the description; the
    reference is the :61: reference for the account owner (NONREF: none)."""
    import mt940

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    starts = [i + 1 for i, line in enumerate(text.splitlines()) if line.startswith(":61:")]
    try:
        parsed = mt940.parse(text)
    except (RuntimeError, ValueError, ArithmeticError) as exc:   # mt-940's: a tag its
        # patterns do not match, an impossible date, an amount Decimal cannot read
        raise StatementError([f"line 1: not an MT940 statement ({type(exc).__name__}: {exc})"]) \
            from None
    statement = str(parsed.data.get("transaction_reference") or "mt940")
    number = parsed.data.get("statement_number")
    out = _Lines(account, f"{statement}/{number}" if number else statement)
    if len(parsed.transactions) != len(starts):
        raise StatementError([f"line 1: {len(starts)} :61: lines but {len(parsed.transactions)} "
                              "transactions read (a malformed :61:?)"])
    for line_no, transaction in zip(starts, parsed.transactions):
        data = transaction.data
        money = data.get("amount")
        when = data.get("date")
        if money is None or when is None:
            out.refuse(line_no, "a :61: without an amount or a value date")
            continue
        try:
            amount = minor_units(money.amount, money.currency)
        except ValueError as exc:
            out.refuse(line_no, str(exc))
            continue
        reference = data.get("customer_reference")
        out.add(line_no, date(when.year, when.month, when.day).isoformat(), amount,
                money.currency, None if reference in (None, "NONREF") else reference,
                None, (data.get("transaction_details") or "").replace("\n", " "))
    return out.done()


def _camt_schema():  # noqa: ANN202 - lxml.etree.XMLSchema
    from lxml import etree

    return etree.XMLSchema(etree.parse(str(CAMT_SCHEMA)))


def parse_camt053(account: str, raw: bytes) -> list[StatementLine]:
    """ISO 20022 camt.053.001.02, validated against the standard's schema first: each Ntry
    is a line (booking date, or value date; CRDT positive, DBIT negative), its reference the
    first of EndToEndId, AcctSvcrRef and NtryRef given, its counterparty the debtor's name on a
    credit and the creditor's on a debit."""
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                             huge_tree=False)
    try:
        document = etree.fromstring(raw, parser)
    except etree.XMLSyntaxError as exc:
        raise StatementError([f"line {exc.lineno}: not XML ({exc.msg})"]) from None
    schema = _camt_schema()
    if not schema.validate(document):
        raise StatementError([f"line {e.line}: {e.message}" for e in schema.error_log])
    ns = {"c": "urn:iso:std:iso:20022:tech:xsd:camt.053.001.02"}
    lines: list[StatementLine] = []
    for statement in document.iterfind(".//c:Stmt", ns):
        out = _Lines(account, statement.findtext("c:Id", namespaces=ns) or "camt053")
        for entry in statement.iterfind("c:Ntry", ns):
            amount_element = entry.find("c:Amt", ns)
            currency = amount_element.get("Ccy") if amount_element is not None else ""
            try:
                amount = minor_units(amount_element.text.strip(), currency)
            except (ValueError, AttributeError) as exc:
                out.refuse(entry.sourceline, str(exc))
                continue
            credit = entry.findtext("c:CdtDbtInd", namespaces=ns) == "CRDT"
            when = entry.findtext("c:BookgDt/c:Dt", namespaces=ns) or \
                entry.findtext("c:ValDt/c:Dt", namespaces=ns) or ""
            first = lambda *paths: next((t.strip() for p in paths  # noqa: E731
                                         if (t := entry.findtext(p, namespaces=ns))), None)
            reference = first(".//c:Refs/c:EndToEndId", "c:AcctSvcrRef", "c:NtryRef")
            party = ".//c:RltdPties/c:Dbtr/c:Nm" if credit else ".//c:RltdPties/c:Cdtr/c:Nm"
            out.add(entry.sourceline, when, amount if credit else -amount, currency,
                    None if reference == "NOTPROVIDED" else reference, first(party),
                    first(".//c:RmtInf/c:Ustrd", "c:AddtlNtryInf") or "")
        lines += out.done()
    if not lines:
        raise StatementError(["the file holds no statement"])
    return lines


def parse_file(account: str, path: str | Path, kind: str | None = None,
               columns: dict[str, str] | None = None) -> list[StatementLine]:
    """A statement file's lines, its format from `kind` or its name (.csv, .sta/.mt940, .xml)."""
    if not is_name(account):
        raise StatementError([f"account {account!r} is not an account name"])
    path = Path(path)
    if path.stat().st_size > MAX_FILE_BYTES:
        raise StatementError([f"line 1: the file is over {MAX_FILE_BYTES} bytes"])
    raw = path.read_bytes()
    kind = kind or {".csv": "csv", ".sta": "mt940", ".mt940": "mt940", ".940": "mt940",
                    ".xml": "camt053"}.get(path.suffix.lower())
    if kind == "csv":
        return parse_csv(account, raw, columns)
    if kind == "mt940":
        return parse_mt940(account, raw)
    if kind == "camt053":
        return parse_camt053(account, raw)
    raise StatementError([f"line 1: say the format (--format {'|'.join(FORMATS)}): "
                          f"{path.name} is not named .csv, .sta or .xml"])
