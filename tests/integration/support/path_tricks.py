"""Spellings of a path that a server behind Envoy could read differently from keygate: each
must match no rule, public or restricted. `{}` stands for the path the trick is applied to."""

TRICKS = [
    ("dot segment", "/./{}"),
    ("dot-dot segment", "/x/../{}"),
    ("encoded dot", "/%2e/{}"),
    ("encoded dot-dot upper", "/x/%2E%2E/{}"),
    ("half encoded dot-dot", "/x/.%2e/{}"),
    ("empty segment", "//{}"),
    ("trailing slash", "/{}/"),
    ("backslash", "/x\\..\\{}"),
    ("encoded slash", "/{}%2Fx"),
    ("encoded slash lower", "/{}%2fx"),
    ("encoded backslash", "/{}%5Cx"),
    ("encoded backslash lower", "/{}%5cx"),
    ("semicolon", "/{};x"),
    ("tomcat dot-dot-semicolon", "/x/..;/{}"),
    ("encoded nul", "/{}%00"),
    ("encoded control", "/{}%1F"),
    ("encoded delete", "/{}%7f"),
    ("double encoded dot", "/%252e%252e/{}"),
    ("double encoded slash", "/{}%252Fx"),
    ("double encoded backslash", "/{}%255cx"),
    ("double encoded slash, each character", "/{}%25%32%46x"),
    ("encoded semicolon", "/{}%3Bx"),
]
