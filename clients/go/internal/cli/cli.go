// Package cli holds what the example commands share: connection flags, the
// authorization header, JSON output and the decoding of lookalike errors
// (google.rpc.Status carrying one google.rpc.ErrorInfo).
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// DefaultServer is used when neither -server nor LOOKALIKE_SERVER is set.
const DefaultServer = "localhost:50051"

// maxMessageBytes matches the server's limit: images up to 32 MiB travel in one message.
const maxMessageBytes = 64 << 20

// Exit codes of the example commands.
const (
	ExitOK    = 0
	ExitError = 1 // the call failed, or a local file could not be read
	ExitUsage = 2 // wrong flags or arguments
)

// Options are the connection flags every command has.
type Options struct {
	Server  string
	Token   string
	Timeout time.Duration
}

// Register adds -server and -timeout to fs; the token comes from LOOKALIKE_TOKEN only,
// so that it never shows in a process list or shell history.
func (o *Options) Register(fs *flag.FlagSet) {
	server := os.Getenv("LOOKALIKE_SERVER")
	if server == "" {
		server = DefaultServer
	}
	fs.StringVar(&o.Server, "server", server, "HOST:PORT of the lookalike server (env LOOKALIKE_SERVER)")
	fs.DurationVar(&o.Timeout, "timeout", 120*time.Second, "deadline for the whole command")
	o.Token = os.Getenv("LOOKALIKE_TOKEN")
}

// Dial opens a plaintext connection (the server speaks h2c; put TLS in front of it with a proxy).
func (o *Options) Dial() (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient(o.Server,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageBytes), grpc.MaxCallSendMsgSize(maxMessageBytes)),
	)
	if err != nil {
		return nil, fmt.Errorf("cannot use server address %q: %w", o.Server, err)
	}
	return conn, nil
}

// Context returns a context with the command's deadline and, when LOOKALIKE_TOKEN is set,
// the token in the "authorization" header, as the server expects it.
func (o *Options) Context() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), o.Timeout)
	if o.Token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", o.Token)
	}
	return ctx, cancel
}

// ReadImage reads an image file to send; the server decodes it.
func ReadImage(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read image: %w", err)
	}
	return data, nil
}

// PrintJSON writes v as one line of JSON to stdout.
func PrintJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// RPCError is a failed call, decoded: the canonical code name (e.g. "INVALID_ARGUMENT")
// and, when the server attached a google.rpc.ErrorInfo, its reason (e.g.
// "IMAGE_UNDECODABLE"), domain and metadata.
type RPCError struct {
	Code     string            `json:"code"`
	Reason   string            `json:"reason,omitempty"`
	Domain   string            `json:"domain,omitempty"`
	Message  string            `json:"message"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// DecodeError turns an error returned by a generated stub into an RPCError. It returns
// false for errors that did not come from a call (no gRPC status).
func DecodeError(err error) (RPCError, bool) {
	st, ok := status.FromError(err)
	if !ok {
		return RPCError{}, false
	}
	out := RPCError{Code: CodeName(st.Code()), Message: st.Message()}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			out.Reason, out.Domain, out.Metadata = info.GetReason(), info.GetDomain(), info.GetMetadata()
			break
		}
	}
	return out, true
}

// CodeName is the canonical name of a gRPC code as in google.rpc.Code ("INVALID_ARGUMENT"),
// the spelling the contract and grpcurl use, rather than Go's "InvalidArgument".
func CodeName[C ~uint32](c C) string {
	if name, ok := code.Code_name[int32(c)]; ok {
		return name
	}
	return fmt.Sprintf("CODE_%d", uint32(c))
}

// Fail prints err to w (stderr) as "PROG: error: CODE REASON: message" followed by one JSON
// line with the decoded fields, and returns the exit code for it.
func Fail(w io.Writer, prog string, err error) int {
	var usage usageError
	if errors.As(err, &usage) {
		fmt.Fprintf(w, "%s: %v (see %s -h)\n", prog, err, prog)
		return ExitUsage
	}
	rpcErr, ok := DecodeError(err)
	if !ok {
		fmt.Fprintf(w, "%s: error: %v\n", prog, err)
		return ExitError
	}
	head := rpcErr.Code
	if rpcErr.Reason != "" {
		head += " " + rpcErr.Reason
	}
	fmt.Fprintf(w, "%s: error: %s: %s\n", prog, head, strings.TrimSpace(rpcErr.Message))
	line, _ := json.Marshal(map[string]RPCError{"error": rpcErr})
	fmt.Fprintf(w, "%s\n", line)
	return ExitError
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// Usage is an error about the command line; Fail reports it with exit code 2.
func Usage(format string, args ...any) error {
	return usageError{fmt.Sprintf(format, args...)}
}
