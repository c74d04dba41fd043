# hubspoke agent supervisor (spoke/supervisor.py starts it; POSIX sh, run by dash when there).
#
#   sh supervisor.sh DIR PROGRAM [ARG...]
#
# spoked starts this in a session of its own, so neither a SIGKILL nor a SIGTERM of spoked
# (nor systemd with KillMode=process) reaches it. It starts PROGRAM in a session and process
# group of its own too (setsid), with stdin from DIR/stdin (the task, when the profile has
# task_on_stdin) or /dev/null, in the directory DIR/cwd names (if any), and stdout/stderr appended to DIR/stdout and DIR/stderr:
# files, not pipes held by spoked, so output survives spoked and a restarted spoked reads it
# from the offset it last recorded.
#
# Files it writes in DIR:
#   sup   its own pid (a line), written first
#   pid   the agent's pid (a line), once it is started; the same line goes to stdout
#         (spoked's pipe, which is then closed)
#   exit  the agent's wait status as sh reports it (a line: 0-255, 128+N = killed by signal
#         N), written to exit.tmp and renamed, so a reader sees all of it or nothing
# When DIR/cgroup names a cgroup v2 directory, the agent joins it before it runs, and every
# process left in it is killed once the agent has exited (so descendants that left the
# agent's process group die too).
dir=$1
shift
echo $$ > "$dir/sup"
trap '' HUP PIPE
if [ -f "$dir/cwd" ]; then
    IFS= read -r wd < "$dir/cwd"
    cd "$wd" || exit 126
fi
in=/dev/null
if [ -f "$dir/stdin" ]; then in=$dir/stdin; fi
cg=
if [ -f "$dir/cgroup" ]; then read -r cg < "$dir/cgroup"; fi
if [ -n "$cg" ]; then
    (echo 0 > "$cg/cgroup.procs" && exec setsid "$@") < "$in" >> "$dir/stdout" 2>> "$dir/stderr" &
else
    setsid "$@" < "$in" >> "$dir/stdout" 2>> "$dir/stderr" &
fi
agent=$!
echo "$agent" > "$dir/pid"
# The same line on stdout, a pipe spoked reads (no polling of the pid file), then let it go:
# nothing else is written there, and spoked may be gone later.
echo "$agent"
exec > /dev/null
wait "$agent"
status=$?
# The agent (the group leader) is gone: what is left of its group goes too, as before.
kill -s KILL -- "-$agent" 2> /dev/null
if [ -n "$cg" ]; then
    if [ -f "$cg/cgroup.kill" ]; then
        echo 1 > "$cg/cgroup.kill"
    else
        while read -r p; do kill -s KILL "$p" 2> /dev/null; done < "$cg/cgroup.procs"
    fi
fi
echo "$status" > "$dir/exit.tmp" && mv -f "$dir/exit.tmp" "$dir/exit"
