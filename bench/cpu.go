package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// CPU is the processor time a case's timed part took, per message, and by
// whom: the broker's and the database's server processes on this machine,
// and this process (the library, its clients and the bench's own work).
// Where a server runs elsewhere (a container, another host) its figure is
// 0; where /proc is missing, CPU is not reported.
type CPU struct {
	BrokerMicros   float64 `json:"broker_us_per_msg"`
	DatabaseMicros float64 `json:"database_us_per_msg"`
	BenchMicros    float64 `json:"bench_us_per_msg"`
	// IdlePercent is the machine's idle share over the timed part.
	IdlePercent float64 `json:"idle_percent"`
}

func (c *CPU) String() string {
	return fmt.Sprintf("CPU per message: broker %.1f µs, database %.1f µs, this process %.1f µs; machine %.0f%% idle",
		c.BrokerMicros, c.DatabaseMicros, c.BenchMicros, c.IdlePercent)
}

// cpuTimes are cumulative CPU seconds at one moment: the servers' per
// process, since a process can end between two readings (the broker's
// short-lived helpers do), and what it had used would then count
// against the rest.
type cpuTimes struct {
	broker, database map[int]float64 // by PID
	self             float64
	// idle and total are the machine's, in clock ticks.
	idle, total float64
	ok          bool
}

// cpuMeter measures CPU from its start to stop.
type cpuMeter struct{ start cpuTimes }

func startCPU() cpuMeter { return cpuMeter{start: readCPU()} }

// stop returns the CPU used since start, per message, or nil where it
// cannot be read.
func (m cpuMeter) stop(messages int) *CPU {
	end := readCPU()
	if !m.start.ok || !end.ok || messages <= 0 || end.total <= m.start.total {
		return nil
	}
	per := func(secs float64) float64 { return secs / float64(messages) * 1e6 }
	return &CPU{
		BrokerMicros:   per(used(m.start.broker, end.broker)),
		DatabaseMicros: per(used(m.start.database, end.database)),
		BenchMicros:    per(end.self - m.start.self),
		IdlePercent:    100 * (end.idle - m.start.idle) / (end.total - m.start.total),
	}
}

// used is the CPU seconds the processes of end used since start: a process
// new since start counts from zero, one gone by end is not counted.
func used(start, end map[int]float64) float64 {
	var sum float64
	for pid, secs := range end {
		sum += secs - start[pid]
	}
	return sum
}

// clockTicks is USER_HZ, the unit of /proc's CPU times: 100 on Linux.
const clockTicks = 100

func readCPU() cpuTimes {
	var t cpuTimes
	stat, err := os.ReadFile("/proc/stat")
	if err != nil {
		return t
	}
	line, _, _ := strings.Cut(string(stat), "\n")
	fields := strings.Fields(line)
	if len(fields) < 5 || fields[0] != "cpu" {
		return t
	}
	for i, f := range fields[1:] {
		v, _ := strconv.ParseFloat(f, 64)
		t.total += v
		if i == 3 || i == 4 { // idle, iowait
			t.idle += v
		}
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return t
	}
	t.self = float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
	t.broker, t.database = map[int]float64{}, map[int]float64{}
	paths, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range paths {
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err != nil {
			continue
		}
		comm, secs, ok := processCPU(p)
		switch {
		case !ok:
		case comm == "postgres":
			t.database[pid] = secs
		case comm == "beam.smp" || strings.HasPrefix(comm, "erl_child"):
			t.broker[pid] = secs
		}
	}
	t.ok = true
	return t
}

// processCPU reads one /proc/PID/stat: the command name and the user and
// system CPU seconds of the process.
func processCPU(path string) (comm string, secs float64, ok bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", 0, false // gone since the listing
	}
	s := string(b)
	open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || closing < open {
		return "", 0, false
	}
	fields := strings.Fields(s[closing+1:])
	if len(fields) < 13 {
		return "", 0, false
	}
	utime, err1 := strconv.ParseFloat(fields[11], 64)
	stime, err2 := strconv.ParseFloat(fields[12], 64)
	if err1 != nil || err2 != nil {
		return "", 0, false
	}
	return s[open+1 : closing], (utime + stime) / clockTicks, true
}
