"""What every benchmark does with its table: print it, and write it to --out when given."""


def emit(text: str, out: str | None) -> None:
  print(text)
  if out:
    with open(out, "w") as f:
      f.write(text)
