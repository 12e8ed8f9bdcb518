package analyticstest

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
)

var sqlBlock = regexp.MustCompile("(?s)```sql\n(.*?)```")

// DocQueries returns every ```sql block of the Markdown file at path, trimmed.
func DocQueries(path string) ([]string, error) {
	doc, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, b := range sqlBlock.FindAllStringSubmatch(string(doc), -1) {
		out = append(out, strings.TrimSpace(b[1]))
	}
	return out, nil
}

// Client runs sql with clickhouse-client against the server at addr
// (host:port, native protocol), as an analyst would, and returns its output.
func Client(addr, sql string) ([]byte, error) {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return nil, fmt.Errorf("address %q has no port", addr)
	}
	out, err := exec.Command("clickhouse-client", "--host", addr[:i], "--port", addr[i+1:], "--query", sql).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("clickhouse-client: %w: %s", err, out)
	}
	return out, nil
}
