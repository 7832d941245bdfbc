"""The agentic workload (``adaspec bench --questions agentic``): the repetitive use where
drafting from earlier requests' outputs pays (SuffixDecoding's agentic SQL and tool calls).

Three sessions of separate requests, each repeating one kind of task over one fixed
context, as an agent or a tool re-sends it: SQL queries over one schema, tool calls
against one tool list, edits of one module. Answers repeat each other's shapes (a query's
``SELECT ... FROM``, a call's JSON, a typed signature) more than they copy their prompt.
Built from public data packages ship: the schema and tickers from matplotlib's sample
stock data (``msft.csv``, ``Stocks.csv``), the module from CPython's ``colorsys.py``
(PSF licence). Rebuild the shipped file with ``python -m adaspec.bench.agentic``.
"""

from __future__ import annotations

import json
import re
import sys
import sysconfig
from pathlib import Path

SCHEMA = """CREATE TABLE msft_daily (      -- Microsoft's daily prices, 2003
  date DATE PRIMARY KEY,            -- e.g. '2003-09-19'
  open REAL, high REAL, low REAL, close REAL,
  volume INTEGER,                   -- shares traded
  adj_close REAL                    -- close adjusted for dividends and splits
);
CREATE TABLE monthly_close (        -- month-start closing prices, 1990-2017
  date DATE PRIMARY KEY,            -- e.g. '1990-02-01'
  ibm REAL, aapl REAL, msft REAL, xrx REAL, amzn REAL, dell REAL,
  googl REAL, adbe REAL,
  gspc REAL,                        -- the S&P 500 index
  ixic REAL                         -- the NASDAQ composite index
);                                  -- NULL where a company was not listed yet"""

SQL_QUESTIONS = (
    "Which five days had the highest trading volume, and what was the close on each?",
    "What was the average closing price in each month of msft_daily?",
    "On which days did the close exceed the open by more than 2 percent?",
    "For each year, what was AAPL's highest monthly close?",
    "In which month did AMZN's close rise the most over the previous month?",
    "What is the average daily range (high minus low) for each day of the week?",
    "How many days had a volume above the average volume of all days?",
    "What was the first month with a GOOGL price, and what was that price?",
)

TOOLS = [
    {
        "name": "get_prices",
        "description": "Closing prices of one ticker between two dates.",
        "parameters": {
            "symbol": "one of IBM, AAPL, MSFT, XRX, AMZN, DELL, GOOGL, ADBE, ^GSPC, ^IXIC",
            "start": "YYYY-MM-DD",
            "end": "YYYY-MM-DD",
            "interval": "day | month",
        },
    },
    {
        "name": "compare_returns",
        "description": "Total return of several tickers over the same period.",
        "parameters": {"symbols": "list of tickers", "start": "YYYY-MM-DD", "end": "YYYY-MM-DD"},
    },
    {
        "name": "plot_series",
        "description": "Draw a chart of one or more tickers.",
        "parameters": {
            "symbols": "list of tickers",
            "start": "YYYY-MM-DD",
            "end": "YYYY-MM-DD",
            "kind": "line | log | candlestick",
        },
    },
]

TOOL_REQUESTS = (
    "Show me Apple's monthly prices for 2005.",
    "How did IBM and Microsoft compare over the year 2000?",
    "Plot Amazon against the NASDAQ from 1998 to 2002 on a log scale.",
    "Get Microsoft's daily prices for September 2003.",
    "Which did better from 2010 to 2015: Google, Adobe or the S&P 500?",
    "Draw a line chart of Dell and Xerox during 2001.",
    "I need Adobe's monthly closes from 1995 through 1999.",
    "Compare Apple, Amazon and Google over 2008.",
)

MODULE_EDITS = (
    "Add type hints to rgb_to_yiq and yiq_to_rgb.",
    "Add type hints to rgb_to_hls and hls_to_rgb.",
    "Add type hints to rgb_to_hsv and hsv_to_rgb.",
    "Add a one-line docstring to each of rgb_to_yiq and yiq_to_rgb.",
    "Make rgb_to_hls raise ValueError when r, g or b is outside 0.0 to 1.0.",
    "Make rgb_to_hsv raise ValueError when r, g or b is outside 0.0 to 1.0.",
    "Rewrite hsv_to_rgb to look up its six cases in a tuple instead of if statements.",
    "Rename the helper _v to _hue_to_value and update hls_to_rgb to match.",
)


def sql_prompt(question: str) -> str:
    return (
        f"You write SQLite queries for this database:\n\n{SCHEMA}\n\n"
        "Reply with one query in a ```sql block and nothing else.\n\n"
        f"Question: {question}"
    )


def tool_prompt(request: str) -> str:
    return (
        "You are a market-data assistant with these tools:\n\n"
        f"{json.dumps(TOOLS, indent=2)}\n\n"
        'Answer with exactly one tool call, as JSON {"name": ..., "arguments": {...}}, '
        "and nothing else.\n\n"
        f"User: {request}"
    )


def edit_prompt(module: str, task: str) -> str:
    return (
        f"Here is colorsys.py:\n\n```python\n{module}```\n\n"
        f"{task} Reply with the changed functions only, in one ```python block."
    )


def colorsys_source() -> str:
    """CPython's colorsys.py without its docstring and comment lines (a shorter prompt)."""
    text = (Path(sysconfig.get_paths()["stdlib"]) / "colorsys.py").read_text()
    lines = [line for line in text[text.index("__all__") :].splitlines() if not _comment(line)]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)) + "\n"


def _comment(line: str) -> bool:
    return line.strip().startswith("#")


def questions() -> list[dict]:
    module = colorsys_source()
    sessions = [
        ("sql", [sql_prompt(q) for q in SQL_QUESTIONS]),
        ("tools", [tool_prompt(r) for r in TOOL_REQUESTS]),
        ("edit", [edit_prompt(module, t) for t in MODULE_EDITS]),
    ]
    return [
        {"question_id": f"{category}-{n}", "category": category, "turns": [prompt]}
        for category, prompts in sessions
        for n, prompt in enumerate(prompts, 1)
    ]


if __name__ == "__main__":
    sys.stdout.writelines(json.dumps(q) + "\n" for q in questions())
