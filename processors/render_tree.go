package processors

import (
	"errors"
	"fmt"
	"math/big"
	"strings"
	"text/template/parse"
)

// A template's parse tree is checked and rewritten so that its execution can
// be bounded (render_budget.go): every range body starts by calling tickFunc,
// and the builtins that build strings are replaced by budgeted ones. Both
// receive $, the root data, which is how they find their execution's budget.

var (
	errSubTemplates = errors.New("{{define}}, {{template}} and {{block}} are not allowed: a notifyd template is one self-contained text")
	errDollar       = errors.New("$ cannot be declared or assigned")
)

// inspectSource parses src and refuses what a budget cannot follow:
// sub-templates (they recurse, and run with another $) and a reassigned $.
func inspectSource(name, src string) (*parse.Tree, error) {
	tr := parse.New(name)
	tr.Mode = parse.SkipFuncCheck // functions are checked by the text/template parse
	set := map[string]*parse.Tree{}
	if _, err := tr.Parse(src, "", "", set); err != nil {
		return nil, err
	}
	// {{define}} and {{block}} add trees; a define of the template's own name
	// replaces tr, so compare identities, not counts.
	for _, other := range set {
		if other != tr {
			return nil, errSubTemplates
		}
	}
	if err := inspectList(tr.Root); err != nil {
		return nil, err
	}
	return tr, nil
}

func inspectList(l *parse.ListNode) error {
	if l == nil {
		return nil
	}
	for _, n := range l.Nodes {
		var err error
		switch n := n.(type) {
		case *parse.TemplateNode:
			err = errSubTemplates
		case *parse.ActionNode:
			err = inspectPipe(n.Pipe)
		case *parse.IfNode:
			err = inspectBranch(&n.BranchNode)
		case *parse.RangeNode:
			err = inspectBranch(&n.BranchNode)
		case *parse.WithNode:
			err = inspectBranch(&n.BranchNode)
		case *parse.ListNode:
			err = inspectList(n)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func inspectBranch(b *parse.BranchNode) error {
	if err := inspectPipe(b.Pipe); err != nil {
		return err
	}
	if err := inspectList(b.List); err != nil {
		return err
	}
	return inspectList(b.ElseList)
}

func inspectPipe(p *parse.PipeNode) error {
	if p == nil {
		return nil
	}
	for _, v := range p.Decl {
		if v.Ident[0] == "$" {
			return errDollar
		}
	}
	for _, c := range p.Cmds {
		for _, a := range c.Args {
			if sub := subPipe(a); sub != nil {
				if err := inspectPipe(sub); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// subPipe is the parenthesized pipeline an argument holds, if any.
func subPipe(n parse.Node) *parse.PipeNode {
	switch n := n.(type) {
	case *parse.PipeNode:
		return n
	case *parse.ChainNode:
		return subPipe(n.Node)
	}
	return nil
}

// rangeProduct refuses integer-literal ranges whose nesting multiplies past
// max iterations: such a template exceeds the budget whatever the data.
// Data-driven ranges count as one iteration here; Render catches the rest.
func rangeProduct(tr *parse.Tree, maxIterations int) error {
	if maxIterations <= 0 {
		return nil
	}
	return literalRanges(tr.Root, big.NewInt(1), 0, big.NewInt(int64(maxIterations)))
}

func literalRanges(l *parse.ListNode, product *big.Int, literals int, limit *big.Int) error {
	if l == nil {
		return nil
	}
	for _, n := range l.Nodes {
		var body, orElse *parse.ListNode
		p, lits := product, literals
		switch n := n.(type) {
		case *parse.RangeNode:
			body, orElse = n.List, n.ElseList
			if k, ok := intLiteral(n.Pipe); ok {
				p, lits = new(big.Int).Mul(product, big.NewInt(max(k, 0))), literals+1
				if p.Cmp(limit) > 0 {
					what := "range"
					if lits > 1 {
						what = "nested range"
					}
					return fmt.Errorf("%s of %s iterations exceeds %s", what, p, limit)
				}
			}
		case *parse.IfNode:
			body, orElse = n.List, n.ElseList
		case *parse.WithNode:
			body, orElse = n.List, n.ElseList
		case *parse.ListNode:
			body = n
		}
		if err := literalRanges(body, p, lits, limit); err != nil {
			return err
		}
		if err := literalRanges(orElse, product, literals, limit); err != nil {
			return err
		}
	}
	return nil
}

// intLiteral is the count of a range over an integer constant ({{range 5}},
// {{range $i := (5)}}), read as text/template executes it: 1e3 is a float,
// which range refuses.
func intLiteral(p *parse.PipeNode) (int64, bool) {
	if p == nil || len(p.Cmds) != 1 || len(p.Cmds[0].Args) != 1 {
		return 0, false
	}
	switch a := p.Cmds[0].Args[0].(type) {
	case *parse.NumberNode:
		hexInt := len(a.Text) > 2 && a.Text[0] == '0' && (a.Text[1] == 'x' || a.Text[1] == 'X') && !strings.ContainsAny(a.Text, "pP")
		runeInt := strings.HasPrefix(a.Text, "'")
		if a.IsFloat && !hexInt && !runeInt && strings.ContainsAny(a.Text, ".eEpP") {
			return 0, false
		}
		return a.Int64, a.IsInt
	case *parse.PipeNode:
		return intLiteral(a)
	}
	return 0, false
}

// tickVar receives tickFunc's result; a declaration prints nothing, and
// html/template leaves declarations unescaped. The name cannot be written in
// a template, so it shadows nothing.
const tickVar = "$notifyd-tick"

// budgetTree rewrites tr in place. html keeps {{… | html}} and
// {{… | urlquery}} in printed actions as they are: html/template merges them
// with its own escapers, and what they build is printed, so the output budget
// bounds it.
func budgetTree(tr *parse.Tree, html bool) {
	budgetList(tr.Root, html)
}

func budgetList(l *parse.ListNode, html bool) {
	if l == nil {
		return
	}
	for _, n := range l.Nodes {
		switch n := n.(type) {
		case *parse.ActionNode:
			budgetPipe(n.Pipe, html && len(n.Pipe.Decl) == 0)
		case *parse.IfNode:
			budgetBranch(&n.BranchNode, html)
		case *parse.WithNode:
			budgetBranch(&n.BranchNode, html)
		case *parse.RangeNode:
			budgetBranch(&n.BranchNode, html)
			if n.List == nil {
				n.List = &parse.ListNode{NodeType: parse.NodeList, Pos: n.Pos}
			}
			n.List.Nodes = append([]parse.Node{tickAction(n.Pos, n.Line)}, n.List.Nodes...)
		case *parse.ListNode:
			budgetList(n, html)
		}
	}
}

func budgetBranch(b *parse.BranchNode, html bool) {
	budgetPipe(b.Pipe, false)
	budgetList(b.List, html)
	budgetList(b.ElseList, html)
}

func budgetPipe(p *parse.PipeNode, keepEscapers bool) {
	if p == nil {
		return
	}
	for _, c := range p.Cmds {
		for _, a := range c.Args {
			if sub := subPipe(a); sub != nil {
				budgetPipe(sub, false)
			}
		}
		id, ok := c.Args[0].(*parse.IdentifierNode)
		if !ok || keepEscapers && (id.Ident == "html" || id.Ident == "urlquery") {
			continue
		}
		if _, ok := budgetedBuiltins[id.Ident]; ok || id.Ident == "printf" {
			c.Args = append([]parse.Node{identifier(budgetedFn+id.Ident, id.Pos), dollar(id.Pos)}, c.Args[1:]...)
		}
	}
}

// tickAction is {{$notifyd-tick := _notifyd_tick $}}, placed at the range.
func tickAction(pos parse.Pos, line int) *parse.ActionNode {
	return &parse.ActionNode{NodeType: parse.NodeAction, Pos: pos, Line: line, Pipe: &parse.PipeNode{
		NodeType: parse.NodePipe, Pos: pos, Line: line,
		Decl: []*parse.VariableNode{{NodeType: parse.NodeVariable, Pos: pos, Ident: []string{tickVar}}},
		Cmds: []*parse.CommandNode{{NodeType: parse.NodeCommand, Pos: pos,
			Args: []parse.Node{identifier(tickFunc, pos), dollar(pos)}}},
	}}
}

func identifier(name string, pos parse.Pos) *parse.IdentifierNode {
	return parse.NewIdentifier(name).SetTree(nil).SetPos(pos)
}

func dollar(pos parse.Pos) *parse.VariableNode {
	return &parse.VariableNode{NodeType: parse.NodeVariable, Pos: pos, Ident: []string{"$"}}
}
