# Sourced by the benchmark queues: once FILE COMMAND... runs COMMAND into FILE unless FILE already
# holds a result, so a queue that was stopped resumes where it stopped.
once() {
  file=$1; shift
  [ -s "$file" ] || { "$@" > "$file.tmp" && mv "$file.tmp" "$file"; }
}
