#!/usr/bin/perl
# sinter's command runner: a small long-lived process that forks and execs the
# host commands sinter asks for, so that each command forks this ~5 MiB process
# instead of the ~150 MiB plugin (a fork's cost grows with the parent's mapped
# memory, and libuv forks on the plugin's main thread). Perl, because perl-base
# is Essential in Debian: every host and image that runs sinter has it, with
# only its core modules, which is all this uses.
#
# Protocol, both ways over stdin/stdout: a message is "<field count>\n" then
# each field as "<byte length>:<bytes>".
#   request: id, timeout ms, kill grace ms, has input (0/1), input,
#            env count, (name, value) × count, file, args...
#   reply:   id, "exit", exit code ("" if killed), signal ("" if none),
#            timed out (0/1), stdout, stderr
#            id, "error", message                       (could not start it)
#   at start: one message "ready".
# Replies come in the order commands finish. On stdin's end (sinter exited),
# running commands get SIGTERM, as execa's cleanup did, and the runner exits.
use strict;
use warnings;
use POSIX qw(WNOHANG WIFEXITED WEXITSTATUS WIFSIGNALED WTERMSIG);
use Fcntl qw(F_GETFL F_SETFL O_NONBLOCK);
use Config;

# Elapsed real time in seconds, 10 ms steps (times(2) in clock ticks): Time::HiRes
# is not in perl-base, and a timeout needs no finer step.
my $hz = POSIX::sysconf(POSIX::_SC_CLK_TCK()) || 100;
sub now() { (POSIX::times())[0] / $hz }

my @signame = split ' ', $Config{sig_name};
$SIG{PIPE} = 'IGNORE';
# An empty handler (not IGNORE, which would let the kernel reap children before
# we read their status): its only job is to interrupt select.
$SIG{CHLD} = sub { };
binmode STDIN;
binmode STDOUT;
nonblock(\*STDIN);

my %jobs;    # id => job
my %bypid;   # pid => id
my @queue;   # requests waiting for a slot
# select(2) sees descriptors below 1024 only, and each command holds up to three:
# past this many at once, requests wait their turn.
my $max_jobs = 256;
my $inbuf = '';
my $outbuf = '';

sub nonblock {
  my ($fh) = @_;
  my $fl = fcntl($fh, F_GETFL, 0);
  fcntl($fh, F_SETFL, $fl | O_NONBLOCK) if defined $fl;
}

sub frame { join('', scalar(@_), "\n", map { length($_) . ':' . $_ } @_) }

sub reply { $outbuf .= frame(@_); flush_out(0) }

# Writes what stdout takes; with $all, until it is all written (at exit).
sub flush_out {
  my ($all) = @_;
  while (length $outbuf) {
    my $n = syswrite(STDOUT, $outbuf);
    if (defined $n) { substr($outbuf, 0, $n) = ''; next }
    return if !$all && $!{EAGAIN};
    if ($!{EAGAIN}) { my $w = ''; vec($w, fileno(STDOUT), 1) = 1; select(undef, $w, undef, 1); next }
    return if $!{EINTR} && !$all;
    next if $!{EINTR};
    exit 0;    # sinter is gone
  }
}

# One whole message from the front of $inbuf, or undef while it is incomplete.
sub take_message {
  my $nl = index($inbuf, "\n");
  return undef if $nl < 0;
  my $count = substr($inbuf, 0, $nl);
  die "command runner: bad message header\n" unless $count =~ /^\d+$/;
  my $pos = $nl + 1;
  my @f;
  for (1 .. $count) {
    my $colon = index($inbuf, ':', $pos);
    return undef if $colon < 0;
    my $len = substr($inbuf, $pos, $colon - $pos);
    die "command runner: bad field length\n" unless $len =~ /^\d+$/;
    return undef if length($inbuf) < $colon + 1 + $len;
    push @f, substr($inbuf, $colon + 1, $len);
    $pos = $colon + 1 + $len;
  }
  substr($inbuf, 0, $pos) = '';
  return \@f;
}

sub start {
  my ($f) = @_;
  my ($id, $timeout, $grace, $has_input, $input, $nenv) = splice(@$f, 0, 6);
  my %env = splice(@$f, 0, 2 * $nenv);
  my ($file, @args) = @$f;
  my ($or, $ow, $er, $ew, $ir, $iw, $xr, $xw);
  # Perl opens these close-on-exec (above $^F), so no command inherits another's pipes.
  unless (pipe($or, $ow) && pipe($er, $ew) && pipe($xr, $xw) && (!$has_input || pipe($ir, $iw))) {
    return reply($id, 'error', "pipe: $!");
  }
  my $pid = fork();
  if (!defined $pid) {
    return reply($id, 'error', "fork: $!");
  }
  if ($pid == 0) {
    # An ignored signal stays ignored across exec: the command gets the defaults.
    $SIG{PIPE} = 'DEFAULT';
    $SIG{CHLD} = 'DEFAULT';
    if ($has_input) { open(STDIN, '<&', $ir) or child_fail($xw) }
    else { open(STDIN, '<', '/dev/null') or child_fail($xw) }
    open(STDOUT, '>&', $ow) or child_fail($xw);
    open(STDERR, '>&', $ew) or child_fail($xw);
    $ENV{$_} = $env{$_} for keys %env;
    { no warnings 'exec'; exec { $file } $file, @args; }
    child_fail($xw);
  }
  close $ow;
  close $ew;
  close $xw;
  close $ir if $has_input;
  # The child's report comes only if exec failed; exec closes the pipe otherwise.
  my $report = '';
  while (1) {
    my $n = sysread($xr, my $chunk, 4096);
    next if !defined $n && $!{EINTR};
    last unless $n;
    $report .= $chunk;
  }
  close $xr;
  if ($report ne '') {
    waitpid($pid, 0);
    close $or;
    close $er;
    close $iw if $has_input;
    return reply($id, 'error', $report);
  }
  nonblock($or);
  nonblock($er);
  my $job = { id => $id, pid => $pid, out => $or, err => $er, stdout => '', stderr => '', timed_out => 0 };
  if ($has_input) {
    nonblock($iw);
    $job->{in} = $iw;
    $job->{input} = $input;
    write_input($job);
  }
  $job->{deadline} = now + $timeout / 1000 if $timeout > 0;
  $job->{grace} = $grace / 1000;
  $jobs{$id} = $job;
  $bypid{$pid} = $id;
}

sub child_fail {
  my ($xw) = @_;
  syswrite($xw, "$!");
  POSIX::_exit(127);
}

sub write_input {
  my ($job) = @_;
  while (length $job->{input}) {
    my $n = syswrite($job->{in}, $job->{input});
    if (defined $n) { substr($job->{input}, 0, $n) = ''; next }
    return if $!{EAGAIN} || $!{EINTR};
    last;    # EPIPE: the command closed its stdin; the rest is not wanted
  }
  close $job->{in};
  delete $job->{in};
}

sub read_pipe {
  my ($job, $which) = @_;
  my $n = sysread($job->{$which}, my $chunk, 65536);
  return if !defined $n && ($!{EAGAIN} || $!{EINTR});
  if ($n) { $job->{$which eq 'out' ? 'stdout' : 'stderr'} .= $chunk; return }
  close $job->{$which};
  delete $job->{$which};
}

sub finish {
  my ($job) = @_;
  my $st = $job->{status};
  my ($code, $sig) = ('', '');
  if (WIFEXITED($st)) { $code = WEXITSTATUS($st) }
  elsif (WIFSIGNALED($st)) { $sig = 'SIG' . ($signame[WTERMSIG($st)] // WTERMSIG($st)) }
  for my $k ('out', 'err', 'in') { close $job->{$k} if $job->{$k} }
  delete $jobs{ $job->{id} };
  reply($job->{id}, 'exit', $code, $sig, $job->{timed_out}, $job->{stdout}, $job->{stderr});
}

reply('ready');
flush_out(1);
my $stdin_open = 1;
while (1) {
  my ($rin, $win) = ('', '');
  vec($rin, fileno(STDIN), 1) = 1 if $stdin_open;
  vec($win, fileno(STDOUT), 1) = 1 if length $outbuf;
  my $now = now;
  my $wait;
  for my $job (values %jobs) {
    vec($rin, fileno($job->{out}), 1) = 1 if $job->{out};
    vec($rin, fileno($job->{err}), 1) = 1 if $job->{err};
    vec($win, fileno($job->{in}), 1) = 1 if $job->{in};
    my @when = grep { defined } $job->{deadline}, $job->{kill_at}, $job->{drain_until};
    # SIGCHLD can land just before select blocks: a running command is looked at again within 0.25 s.
    push @when, $now + 0.25 if !defined $job->{status};
    for my $t (@when) { $wait = $t - $now if !defined $wait || $t - $now < $wait }
  }
  $wait = 0 if defined $wait && $wait < 0;
  my $n = select(my $rout = $rin, my $wout = $win, undef, $wait);
  if ($n > 0) {
    flush_out(0) if vec($wout, fileno(STDOUT), 1);
    if ($stdin_open && vec($rout, fileno(STDIN), 1)) {
      my $got = sysread(STDIN, my $chunk, 65536);
      if (defined $got && $got == 0) { $stdin_open = 0 }
      elsif ($got) {
        $inbuf .= $chunk;
        while (my $msg = take_message()) { push @queue, $msg }
      }
    }
    for my $job (values %jobs) {
      read_pipe($job, 'out') if $job->{out} && vec($rout, fileno($job->{out}), 1);
      read_pipe($job, 'err') if $job->{err} && vec($rout, fileno($job->{err}), 1);
      write_input($job) if $job->{in} && vec($wout, fileno($job->{in}), 1);
    }
  }
  while ((my $pid = waitpid(-1, WNOHANG)) > 0) {
    my $id = delete $bypid{$pid};
    next unless defined $id && $jobs{$id};
    $jobs{$id}{status} = $?;
    # Output a command left to a process of its own (one that outlived it) is
    # not waited for forever: 2 s after the exit, the pipes are let go.
    $jobs{$id}{drain_until} = now + 2;
  }
  $now = now;
  for my $job (values %jobs) {
    if (defined $job->{status}) {
      finish($job) if (!$job->{out} && !$job->{err}) || $now >= $job->{drain_until};
      next;
    }
    if ($job->{deadline} && $now >= $job->{deadline}) {
      $job->{timed_out} = 1;
      delete $job->{deadline};
      kill 'TERM', $job->{pid};
      $job->{kill_at} = $now + $job->{grace};
    }
    elsif ($job->{kill_at} && $now >= $job->{kill_at}) {
      kill 'KILL', $job->{pid};
      delete $job->{kill_at};
    }
  }
  start(shift @queue) while @queue && keys(%jobs) < $max_jobs;
  if (!$stdin_open) {
    kill 'TERM', $_->{pid} for grep { !defined $_->{status} } values %jobs;
    exit 0;
  }
}
