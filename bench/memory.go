package main

import (
	"bufio"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Memory is the peak process memory seen while a case ran.
type Memory struct {
	// PeakHeapInuseMiB is runtime.MemStats.HeapInuse: live heap spans, the
	// figure that grows if the library holds work in memory.
	PeakHeapInuseMiB float64 `json:"peak_heap_inuse_mib"`
	// PeakSysMiB is runtime.MemStats.Sys: everything the Go runtime has
	// obtained from the OS.
	PeakSysMiB float64 `json:"peak_sys_mib"`
	// PeakRSSMiB is VmRSS from /proc/self/status (0 where there is none).
	PeakRSSMiB float64 `json:"peak_rss_mib"`
	Samples    int     `json:"samples"`
}

// memSampler samples memory on a ticker until stopped.
type memSampler struct {
	stop chan struct{}
	done sync.WaitGroup
	peak Memory
}

// startMemSampler collects garbage first, so a case does not inherit the
// previous case's heap, then samples every interval.
func startMemSampler(interval time.Duration) *memSampler {
	runtime.GC()
	debug.FreeOSMemory()
	s := &memSampler{stop: make(chan struct{})}
	s.sample()
	s.done.Add(1)
	go func() {
		defer s.done.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
				s.sample()
			}
		}
	}()
	return s
}

func (s *memSampler) sample() {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	const mib = 1 << 20
	s.peak.PeakHeapInuseMiB = max(s.peak.PeakHeapInuseMiB, float64(ms.HeapInuse)/mib)
	s.peak.PeakSysMiB = max(s.peak.PeakSysMiB, float64(ms.Sys)/mib)
	s.peak.PeakRSSMiB = max(s.peak.PeakRSSMiB, float64(rssBytes())/mib)
	s.peak.Samples++
}

// Stop ends sampling, takes a last sample and returns the peaks.
func (s *memSampler) Stop() Memory {
	close(s.stop)
	s.done.Wait()
	s.sample()
	return s.peak
}

// rssBytes reads the resident set size from /proc/self/status; 0 where the
// file does not exist (not Linux).
func rssBytes() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "VmRSS:") {
			continue
		}
		fields := strings.Fields(strings.TrimPrefix(line, "VmRSS:"))
		if len(fields) == 0 {
			return 0
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return 0
		}
		return kb << 10
	}
	return 0
}
