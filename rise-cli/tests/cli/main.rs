mod help;
