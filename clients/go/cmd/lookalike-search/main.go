// Command lookalike-search registers images in a database of a lookalike server and
// searches it with a query image:
//
//	lookalike-search -server 127.0.0.1:50051 -db products -query q.jpg \
//	    shoe-1=shoe_front.jpg shoe-1=shoe_side.jpg bag-7=bag.jpg
//
// It creates the database when it does not exist, registers each GROUP=PATH pair over one
// DatabaseService.BulkSetImages stream (the server numbers the images inside each group),
// runs SearchService.Search and prints one JSON object:
//
//	{"database":"products","registered":[{"group_id":"shoe-1","intra_id":0,"path":"shoe_front.jpg"},...],
//	 "searched_count":3,"hits":[{"group_id":"shoe-1","intra_id":0,"score":0.91},...]}
//
// Without pairs it only searches. Errors are reported as by lookalike-match: gRPC code and
// ErrorInfo reason on stderr, exit code 1 (2 for a wrong command line). A registration
// rejected by the server (e.g. IMAGE_UNDECODABLE) is reported the same way and no search runs.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/lookalike-dev/lookalike/clients/go/internal/cli"
	lookalikev1 "github.com/lookalike-dev/lookalike/clients/go/lookalikev1"
)

const prog = "lookalike-search"

type registration struct {
	Group string
	Path  string
}

type registered struct {
	GroupID string `json:"group_id"`
	IntraID int64  `json:"intra_id"`
	Path    string `json:"path"`
}

type hit struct {
	GroupID string  `json:"group_id"`
	IntraID int64   `json:"intra_id"`
	Score   float32 `json:"score"`
}

type output struct {
	Database      string       `json:"database"`
	Created       bool         `json:"created"`
	Registered    []registered `json:"registered"`
	SearchedCount int64        `json:"searched_count"`
	Hits          []hit        `json:"hits"`
}

type searchOptions struct {
	cli.Options
	Database    string
	Query       string
	TopK        int
	OnePerGroup bool
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet(prog, flag.ContinueOnError)
	var opts searchOptions
	opts.Register(fs)
	fs.StringVar(&opts.Database, "db", "", "database name (created when missing; required)")
	fs.StringVar(&opts.Query, "query", "", "query image file (required)")
	fs.IntVar(&opts.TopK, "k", 10, "number of hits, 1-1000")
	fs.BoolVar(&opts.OnePerGroup, "one-per-group", false, "return only the best image of each group")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: %s -db NAME -query IMAGE [-k 10] [-one-per-group] [-server HOST:PORT] [GROUP=PATH ...]\n\n", prog)
		fmt.Fprintf(fs.Output(), "Registers each GROUP=PATH image, then searches with IMAGE; prints JSON. Token: env LOOKALIKE_TOKEN.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return cli.ExitOK
		}
		return cli.ExitUsage
	}
	regs, err := parsePairs(fs.Args())
	if err == nil && opts.Database == "" {
		err = cli.Usage("-db is required")
	}
	if err == nil && opts.Query == "" {
		err = cli.Usage("-query is required")
	}
	if err != nil {
		return cli.Fail(os.Stderr, prog, err)
	}
	out, err := search(&opts, regs)
	if err != nil {
		return cli.Fail(os.Stderr, prog, err)
	}
	if err := cli.PrintJSON(out); err != nil {
		return cli.Fail(os.Stderr, prog, err)
	}
	return cli.ExitOK
}

// parsePairs splits GROUP=PATH arguments at the first '='.
func parsePairs(args []string) ([]registration, error) {
	regs := make([]registration, 0, len(args))
	for _, a := range args {
		group, path, ok := strings.Cut(a, "=")
		if !ok || group == "" || path == "" {
			return nil, cli.Usage("argument %q is not GROUP=PATH", a)
		}
		regs = append(regs, registration{Group: group, Path: path})
	}
	return regs, nil
}

func search(opts *searchOptions, regs []registration) (*output, error) {
	query, err := cli.ReadImage(opts.Query)
	if err != nil {
		return nil, err
	}
	conn, err := opts.Dial()
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := opts.Context()
	defer cancel()
	db := lookalikev1.NewDatabaseServiceClient(conn)

	out := &output{Database: opts.Database, Registered: []registered{}, Hits: []hit{}}
	_, err = db.CreateDatabase(ctx, &lookalikev1.CreateDatabaseRequest{Name: opts.Database})
	switch {
	case err == nil:
		out.Created = true
	case status.Code(err) == codes.AlreadyExists:
		// Reuse it.
	default:
		return nil, err
	}

	if len(regs) > 0 {
		keys, err := register(ctx, db, opts.Database, regs)
		if err != nil {
			return nil, err
		}
		for i, k := range keys {
			out.Registered = append(out.Registered, registered{GroupID: k.GetGroupId(), IntraID: k.GetIntraId(), Path: regs[i].Path})
		}
	}

	resp, err := lookalikev1.NewSearchServiceClient(conn).Search(ctx, &lookalikev1.SearchRequest{
		Database:    opts.Database,
		Query:       &lookalikev1.SearchRequest_Image{Image: &lookalikev1.Image{Content: query}},
		TopK:        int32(opts.TopK),
		OnePerGroup: opts.OnePerGroup,
	})
	if err != nil {
		return nil, err
	}
	out.SearchedCount = resp.GetSearchedCount()
	for _, h := range resp.GetHits() {
		out.Hits = append(out.Hits, hit{GroupID: h.GetKey().GetGroupId(), IntraID: h.GetKey().GetIntraId(), Score: h.GetScore()})
	}
	return out, nil
}

// register sends every image over one BulkSetImages stream and returns the keys the
// server assigned, in order. Any rejected item fails the whole command with the
// item's reason, so a search never runs on a half-registered set without saying so.
func register(ctx context.Context, db lookalikev1.DatabaseServiceClient, database string, regs []registration) ([]*lookalikev1.ImageKey, error) {
	stream, err := db.BulkSetImages(ctx)
	if err != nil {
		return nil, err
	}
	for i, r := range regs {
		content, err := cli.ReadImage(r.Path)
		if err != nil {
			_, _ = stream.CloseAndRecv()
			return nil, err
		}
		req := &lookalikev1.BulkSetImagesRequest{
			GroupId:   r.Group,
			Content:   &lookalikev1.BulkSetImagesRequest_Image{Image: &lookalikev1.Image{Content: content}},
			ClientRef: r.Path,
		}
		if i == 0 {
			req.Database = database
		}
		if err := stream.Send(req); err != nil {
			if errors.Is(err, io.EOF) {
				// The server ended the stream early; its status says why.
				_, err = stream.CloseAndRecv()
			}
			return nil, err
		}
	}
	summary, err := stream.CloseAndRecv()
	if err != nil {
		return nil, err
	}
	if n := len(summary.GetFailures()); n > 0 {
		f := summary.GetFailures()[0]
		return nil, fmt.Errorf("%d of %d images were not registered; first: %s: %s: %s",
			n, summary.GetReceivedCount(), f.GetClientRef(), f.GetReason(), f.GetMessage())
	}
	if len(summary.GetKeys()) != len(regs) {
		return nil, fmt.Errorf("server registered %d images but returned %d keys", len(regs), len(summary.GetKeys()))
	}
	return summary.GetKeys(), nil
}
