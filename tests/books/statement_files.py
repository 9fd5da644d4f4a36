"""Statement files a bank would send, written from (date, amount, currency, reference,
counterparty, description) rows, in each format the reconciliation reads."""
from __future__ import annotations

from decimal import Decimal
from xml.sax.saxutils import escape

Row = tuple[str, int, str, str | None, str | None, str]   # amounts in minor units, signed


def major(amount: int) -> Decimal:
    return Decimal(abs(amount)).scaleb(-2)


def to_csv(rows: list[Row]) -> bytes:
    out = ["date,amount,currency,reference,counterparty,description"]
    out += [f"{d},{'-' if a < 0 else ''}{major(a)},{c},{r or ''},{p or ''},{t}"
            for d, a, c, r, p, t in rows]
    return ("\n".join(out) + "\n").encode()


def to_mt940(rows: list[Row], statement: str = "STMT-1") -> bytes:
    first = rows[0][0].replace("-", "")[2:]
    out = [":20:" + statement, ":25:NL00BANK0123456789", ":28C:1/1", f":60F:C{first}EUR0,00"]
    for d, a, _, r, _, t in rows:
        day = d.replace("-", "")[2:]
        amount = str(major(a)).replace(".", ",")
        out += [f":61:{day}{day[2:]}{'D' if a < 0 else 'C'}{amount}NTRF{r or 'NONREF'}//B",
                f":86:{t}"]
    out.append(f":62F:C{first}EUR0,00")
    return ("\n".join(out) + "\n").encode()


def to_camt053(rows: list[Row], statement: str = "STMT-1") -> bytes:
    entries = []
    for d, a, c, r, p, t in rows:
        party = "Dbtr" if a > 0 else "Cdtr"
        entries.append(f"""
      <Ntry>
        <Amt Ccy="{c}">{major(a)}</Amt>
        <CdtDbtInd>{'CRDT' if a > 0 else 'DBIT'}</CdtDbtInd>
        <Sts>BOOK</Sts>
        <BookgDt><Dt>{d}</Dt></BookgDt>
        <ValDt><Dt>{d}</Dt></ValDt>
        <BkTxCd><Prtry><Cd>TRF</Cd></Prtry></BkTxCd>
        <NtryDtls><TxDtls>
          <Refs><EndToEndId>{escape(r or 'NOTPROVIDED')}</EndToEndId></Refs>
          {f'<RltdPties><{party}><Nm>{escape(p)}</Nm></{party}></RltdPties>' if p else ''}
          <RmtInf><Ustrd>{escape(t)}</Ustrd></RmtInf>
        </TxDtls></NtryDtls>
      </Ntry>""")
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.02">
  <BkToCstmrStmt>
    <GrpHdr><MsgId>MSG-{statement}</MsgId><CreDtTm>2026-12-07T00:00:00</CreDtTm></GrpHdr>
    <Stmt>
      <Id>{statement}</Id>
      <CreDtTm>2026-12-07T00:00:00</CreDtTm>
      <Acct><Id><IBAN>NL00BANK0123456789</IBAN></Id></Acct>
      <Bal>
        <Tp><CdOrPrtry><Cd>OPBD</Cd></CdOrPrtry></Tp>
        <Amt Ccy="{rows[0][2]}">0.00</Amt><CdtDbtInd>CRDT</CdtDbtInd><Dt><Dt>{rows[0][0]}</Dt></Dt>
      </Bal>{''.join(entries)}
    </Stmt>
  </BkToCstmrStmt>
</Document>
""".encode()


WRITERS = {"csv": to_csv, "mt940": to_mt940, "camt053": to_camt053}
SUFFIX = {"csv": ".csv", "mt940": ".sta", "camt053": ".xml"}
