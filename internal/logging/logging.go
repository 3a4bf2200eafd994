// Package logging applies the --log-format flag of podidentity's binaries: klog's text lines, or
// one JSON object per line for log pipelines that parse fields.
package logging

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"

	"k8s.io/klog/v2"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
)

// Setup routes klog, every logr logger taken from it (klog.Background, klog.NewKlogr) and
// controller-runtime's (its caches, clients and manager) to the format. verbosity is klog's -v: it
// also bounds V-levels of loggers that bypass klog's own check. JSON lines carry "time", "level",
// "msg", "logger" and the key/value pairs as fields.
func Setup(format string, verbosity int, w io.Writer) error {
	switch format {
	case "", "text":
	case "json":
		h := slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.Level(-verbosity)})
		klog.SetSlogLogger(slog.New(h))
	default:
		return fmt.Errorf("--log-format %q is not supported: use text or json", format)
	}
	RouteControllerRuntime()
	return nil
}

// RouteControllerRuntime sends controller-runtime's logger through klog. Without it that library
// drops its log lines and, 30 s after start, prints "log.SetLogger(...) was never called" with a
// stack trace. Only the first call takes effect (the library's rule); klog.NewKlogr follows later
// klog.SetLogger calls, so one routing serves every format.
func RouteControllerRuntime() { ctrllog.SetLogger(klog.NewKlogr()) }

// Reset goes back to klog's text output (tests).
func Reset() { klog.ClearLogger() }

// Verbosity is the value of klog's -v in a flag set klog.InitFlags filled (0 when absent).
func Verbosity(fs *flag.FlagSet) int {
	f := fs.Lookup("v")
	if f == nil {
		return 0
	}
	v, _ := strconv.Atoi(f.Value.String())
	return v
}
